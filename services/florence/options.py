"""Settings of the florence service (flags and ARCHIVETAG_* variables)."""

from archivetag.runtime.settings import OptionGroup

OPTIONS = OptionGroup("florence", ())
