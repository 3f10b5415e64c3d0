"""Decode one image file in this process and print JSON: the decoder's estimate of its peak memory and the
peak resident memory the decode added (VmHWM, reset just before through /proc/self/clear_refs).

    python -m tests.support.decode_peak FILE [MIN_EDGE]
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

from archivetag.runtime.images import ImageLimits, finish_decode, open_image


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> int:
    data = Path(sys.argv[1]).read_bytes()
    min_edge = int(sys.argv[2]) if len(sys.argv) > 2 else None
    limits = ImageLimits(max_bytes=64 << 20, max_decode_bytes=8 << 30)
    image, plan = open_image(data, limits, min_edge)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
    before = rss_kib("VmRSS")
    decoded = finish_decode(image, plan)
    peak = rss_kib("VmHWM")
    print(json.dumps({"format": plan.format, "mode": plan.mode, "size": decoded.size,
                      "estimate_mib": plan.peak_bytes / 2**20, "measured_mib": (peak - before) / 1024}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
