"""Settings of the rampp service (flags and ARCHIVETAG_* variables)."""

from archivetag.runtime.settings import OptionGroup

OPTIONS = OptionGroup("rampp", ())
