"""The hub repositories `models pull` reads, as the models' specs declare them."""

from archivetag_florence.spec import REPOS as FLORENCE_REPOS
from archivetag_rampp.spec import REPO as RAMPP_REPO, SPEC as RAMPP
from archivetag_siglip.spec import DEFAULT_MODEL as SIGLIP_REPO, SPEC as SIGLIP

PINNED = {**(RAMPP.pull.pinned if RAMPP.pull else {}), **(SIGLIP.pull.pinned if SIGLIP.pull else {})}

__all__ = ["FLORENCE_REPOS", "PINNED", "RAMPP_REPO", "SIGLIP_REPO"]
