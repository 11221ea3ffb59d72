"""How long a full garbage collection pauses a process that holds a loaded engine, before and after
``gc.freeze()`` (what the server's inference worker does once its engine is loaded, as vLLM's server does).

CPython's oldest-generation collection walks every tracked object; after ``import torch`` that is about 170,000
of them. A collection while serving stops every thread holding the GIL for that long (the worker's step
included). ``gc.freeze()`` moves the objects alive at startup to a permanent generation the collector skips.

Not a test. Example::

    python benchmarks/gc_pause.py            # the bundled model
    python benchmarks/gc_pause.py EXPORT_DIR
"""

from __future__ import annotations

import argparse
import gc
import time
from datetime import datetime, timezone

from common import machine


def full_collection_ms(rounds: int) -> float:
    """The best of ``rounds`` full collections, in ms."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", nargs="?", help="an export directory (default: the bundled model)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from selfish_deploy.assets import default_model_dir
    from selfish_deploy.runtime import SparseLM

    lm = SparseLM.load(args.export or default_model_dir(), backend="sparse")
    lm.score_ids([[1, 2, 3, 4]])  # one request's worth of imports and caches
    tracked = len(gc.get_objects())
    before = full_collection_ms(args.rounds)
    gc.freeze()
    after = full_collection_ms(args.rounds)
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"tracked objects after load: {tracked:,}; frozen: {gc.get_freeze_count():,}")
    print(f"full collection (best of {args.rounds}): {before:.1f} ms before gc.freeze(), {after * 1e3:.1f} µs after")


if __name__ == "__main__":
    main()
