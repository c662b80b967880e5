"""Statistics benchmark: the sequential final task over 50,000 videos' partials.

    .venv/bin/python bench/statistics_at_scale.py --videos 50000 --out /tmp/trackset-bench-stats

Issue 15 asks that the whole-dataset statistics stay exact (float64, fixed order) and read
each partial once, measured at 50,000 partials. This writes ``--videos`` partials files of
the real format (moments of random samples of each statistic's dimension, as the H5 stage
would), then times :func:`trackset.dataset.statistics.write_dataset_statistics` twice, in a
fresh child process each time (the second finds the files in the page cache, as a nightly
refresh right after a build does; the first after ``posix_fadvise(DONTNEED)`` on every
file, the closest to a cold read without root). It counts the partial files opened by
wrapping ``Path.read_text`` and reports the child's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

MIB = 2**20


def write_partials(dataset: Path, videos: int, seed: int) -> None:
    """``videos`` partials files under ``dataset/partials`` (skipped when already there)."""
    from trackset.domain import format_video_id
    from trackset.formats.layout import DatasetLayout
    from trackset.formats.statistics import Moments, VideoPartials, statistic_dims

    layout = DatasetLayout(dataset)
    folder = layout.partials(format_video_id(0)).parent
    if folder.is_dir() and len(list(folder.glob("*.json"))) == videos:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(videos):
        moments = {
            name: Moments.of(rng.normal(size=(int(rng.integers(1, 40)), dim)))
            for name, dim in statistic_dims("3d").items()
        }
        moments["hand_rot"] = Moments.of(rng.normal(size=(moments["hand_uvd"].count, statistic_dims("3d")["hand_rot"])))
        video_id = format_video_id(index)
        VideoPartials(video_id=video_id, fingerprint=f"{index:x}", **moments).write(layout.partials(video_id))


def drop_page_cache(folder: Path) -> None:
    for path in folder.glob("*.json"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child(dataset: Path) -> None:
    """Aggregate once, counting reads of each partial; print seconds, reads and peak RSS."""
    from trackset.dataset.statistics import write_dataset_statistics
    from trackset.formats.layout import DatasetLayout
    from trackset.gpu.memory_probe import read_vmhwm_bytes

    reads: Counter[str] = Counter()
    original = Path.read_text

    def counted(self: Path, *args: object, **kwargs: object) -> str:
        if self.parent.name == "partials":
            reads[self.name] += 1
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    Path.read_text = counted  # type: ignore[method-assign]
    started = time.perf_counter()
    write_dataset_statistics(DatasetLayout(dataset), std_floor=1e-6)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"seconds": seconds, "files_read": len(reads), "max_reads": max(reads.values()), "rss": read_vmhwm_bytes()}
        )
    )


def run_child(dataset: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(dataset)], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-bench-stats"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    dataset = args.out / "dataset"
    write_partials(dataset, args.videos, seed=3)
    size = sum(p.stat().st_size for p in (dataset / "partials").glob("*.json"))
    drop_page_cache(dataset / "partials")
    results, outputs = {}, set()
    for name in ("page cache dropped", "warm", "warm again"):
        results[name] = run_child(dataset)
        outputs.add((dataset / "normalization_stats.yaml").read_bytes())
    print(
        "\n".join(
            [
                f"- command: `.venv/bin/python bench/statistics_at_scale.py {' '.join(sys.argv[1:])}`",
                f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}; date: {started}",
                f"- {args.videos} partials files, {size / MIB:.1f} MiB in all",
                "",
                "| run | seconds | partial files read | reads of the most-read file | peak RSS MiB |",
                "|---|---|---|---|---|",
                *(
                    f"| {name} | {r['seconds']:.1f} | {r['files_read']} | {r['max_reads']} | {r['rss'] / MIB:.0f} |"
                    for name, r in results.items()
                ),
                "",
                f"- statistics YAML byte-identical across the runs: {len(outputs) == 1}",
            ]
        )
    )


if __name__ == "__main__":
    main()
