"""Flow-process memory wave by wave: does anything per video stay behind once a wave landed?

    .venv/bin/python bench/flow_memory.py --videos 600 --wave-size 100 --out /tmp/trackset-bench-flow-memory

Runs ``build-dataset`` in this process on the Dask runner with the scale benchmark's
zero-cost clips (``bench/scale.py``: tiny synthetic videos, zero-cost models) and a
temporary Prefect server. After each wave's H5 files land it collects garbage and prints
the process's RSS and the object types whose count grew since the previous wave: a flat
RSS and no per-video types is what issue 15 asks of the flow process (BENCHMARKS.md, scale).
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))  # bench/scale.py, run as a script


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--wave-size", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-flow-memory"))
    args = parser.parse_args()
    import scale

    from trackset.flows.cli import EPHEMERAL_SERVER_DEFAULTS

    for key, value in {**EPHEMERAL_SERVER_DEFAULTS, "PREFECT_LOGGING_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)
    import trackset.flows.waves as waves
    from trackset.flows.build_dataset import build_dataset

    out = args.out / "runs" / "build"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    scale.corpus(out, args.videos)
    land = waves._land
    previous: collections.Counter[str] = collections.Counter()

    def measured(*a: Any, **k: Any) -> int:
        landed = land(*a, **k)
        gc.collect()
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        grown = sorted(((counts[t] - previous[t], t) for t in counts), reverse=True)[:6]
        print(f"| {rss_bytes() / 2**20:.0f} | {', '.join(f'{t} +{d}' for d, t in grown if d > 0)} |", flush=True)
        previous.clear()
        previous.update(counts)
        return landed

    waves._land = measured  # looked up on the module by process_waves
    overrides = scale.settings(out)
    overrides["run"]["wave_size"] = args.wave_size
    print(f"{args.videos} videos in waves of {args.wave_size}; after each wave landed:")
    print("| flow RSS MiB | objects grown since the previous wave (first: since start) |")
    print("|---|---|")
    summary = build_dataset(overrides=overrides)
    if summary.failures:
        raise RuntimeError(f"{len(summary.failures)} failures, e.g. {summary.failures[0]}")


if __name__ == "__main__":
    main()
