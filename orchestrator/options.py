"""Settings of the orchestrator (flags and ARCHIVETAG_* variables)."""

from archivetag.runtime.settings import OptionGroup

OPTIONS = OptionGroup("orchestrator", ())
OPTION_GROUPS = [OPTIONS]
