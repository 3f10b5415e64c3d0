"""`python -m archivetag ...` is the `archivetag` command."""

import sys

from archivetag.cli import main

sys.exit(main())
