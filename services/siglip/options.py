"""Settings of the siglip service (flags and ARCHIVETAG_* variables)."""

from archivetag.runtime.settings import OptionGroup

OPTIONS = OptionGroup("siglip", ())
