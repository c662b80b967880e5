"""What checked markers cost at corpus scale: ``is_done`` over N videos, the stale-temporary
sweep, and stamping a big output.

    .venv/bin/python bench/markers.py --videos 50000

Registration asks ``is_done`` of the H5 stage for every video whose done-index entry cannot
tell (a first run, a settings change), and every stage asks it of every video of a wave.
This writes N videos' worth of small outputs with their markers and partials into a
temporary directory (each output 1 KiB: the check reads markers and stats outputs, it never
reads outputs, so their size does not matter) and times:

- ``is_done`` of a work-directory stage (depth_camera) and of the H5 stage (partials read, H5
  stat'ed) over N videos, against the check of the version before sizes were recorded
  (re-implemented here: exists, marker or partials read, fingerprint compared), in
  alternating rounds on the same files so that both see the same machine;
- the H5 check under ``run.verify_checksums`` on the 1 KiB files (it reads every byte: for
  real files, add their size over the sha256 rate below);
- ``remove_stale_temporaries`` with all N videos pending (the per-video folders included);
- the sha256 of a 112 MB file (a 190-frame ``frames.npy``), once written, which every
  stage now pays per output when it marks a video done.

The page cache is warm (the files were just written): a cold network filesystem is slower.
Prints a markdown block for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from trackset.config.settings import Settings
from trackset.dataset.retention import remove_stale_temporaries
from trackset.domain import VideoRef, format_video_id
from trackset.formats.layout import DatasetLayout, WorkLayout
from trackset.formats.markers import FileStamp
from trackset.formats.statistics import STATISTIC_DIMS, Moments, VideoPartials
from trackset.stages.registry import build_stage

OUTPUT = b"x" * 1024
BIG_BYTES = 112_000_000


def timed(label: str, action: Callable[[], object], rows: list[tuple[str, float]]) -> None:
    start = time.perf_counter()
    action()
    rows.append((label, time.perf_counter() - start))


def write_corpus(root: Path, videos: list[VideoRef], settings: Settings) -> None:
    """Depth outputs with their markers, H5 files with their partials, frames folders."""
    depth, h5 = build_stage("depth_camera", settings), build_stage("h5_build", settings)
    work, dataset = WorkLayout(root / "work"), DatasetLayout(root / "dataset")
    for folder in (work.vipe("00000").parent, work.marker("depth_camera", "00000").parent, dataset.root / "partials"):
        folder.mkdir(parents=True, exist_ok=True)
    moments = {name: Moments.empty(dim) for name, dim in STATISTIC_DIMS.items()}
    for video in videos:
        vid = video.video_id
        work.vipe(vid).write_bytes(OUTPUT)
        work.frames_dir(vid).mkdir(parents=True)
        stamp = FileStamp(len(OUTPUT), "0" * 64)
        marker = {"fingerprint": depth.fingerprint(video), "outputs": {f"vipe/{vid}.npz": stamp.to_json()}}
        work.marker("depth_camera", vid).write_text(json.dumps(marker))
        dataset.h5(vid).write_bytes(OUTPUT)
        partials = VideoPartials(
            video_id=vid, fingerprint=h5.fingerprint(video), **moments, h5=FileStamp.of(dataset.h5(vid))
        )
        dataset.partials(vid).write_text(partials.to_json_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=50_000)
    args = parser.parse_args()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="trackset-markers-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        paths = {"videos_dir": root / "videos", "work_dir": root / "work", "dataset_dir": root / "dataset"}
        settings = Settings(paths=paths)
        verifying = Settings(paths=paths, run={"verify_checksums": True})
        videos = [VideoRef(format_video_id(i), root / "videos" / f"{i}.mp4", f"hash-{i}") for i in range(args.videos)]
        timed("write the corpus (not a trackset cost)", lambda: write_corpus(root, videos, settings), rows)
        depth, h5 = build_stage("depth_camera", settings), build_stage("h5_build", settings)
        for round_ in (1, 2):
            timed(
                f"round {round_}: depth_camera is_done before (fingerprint only)",
                lambda: assert_all(
                    lambda v: fingerprint_only(
                        depth.marker_path(v.video_id), depth.outputs(v.video_id), depth.fingerprint(v)
                    ),
                    videos,
                ),
                rows,
            )
            timed(
                f"round {round_}: depth_camera is_done, sizes checked", lambda: assert_all(depth.is_done, videos), rows
            )
            timed(
                f"round {round_}: h5_build is_done before (fingerprint only)",
                lambda: assert_all(lambda v: partials_only(*h5.outputs(v.video_id), h5.fingerprint(v)), videos),
                rows,
            )
            timed(f"round {round_}: h5_build is_done, sizes checked", lambda: assert_all(h5.is_done, videos), rows)
        checking = build_stage("h5_build", verifying)
        timed("h5_build is_done, verify_checksums (1 KiB H5s)", lambda: assert_all(checking.is_done, videos), rows)
        timed("remove_stale_temporaries, all pending", lambda: remove_stale_temporaries(settings, videos, False), rows)
        big = root / "frames.npy"
        big.write_bytes(os.urandom(BIG_BYTES))
        timed("sha256 of a 112 MB frames.npy (FileStamp.of)", lambda: FileStamp.of(big), rows)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    print(
        f"`bench/markers.py --videos {args.videos}`, {when}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, warm page cache\n"
    )
    print("| step | seconds | per video (ms) |\n|---|---|---|")
    for label, seconds in rows:
        per = "" if label.startswith(("write", "sha256")) else f"{1000 * seconds / args.videos:.3f}"
        print(f"| {label} | {seconds:.2f} | {per} |")


def fingerprint_only(marker: Path, outputs: list[Path], fingerprint: str) -> bool:
    """``Stage.is_done`` before sizes were recorded."""
    if not marker.is_file() or not all(p.is_file() for p in outputs):
        return False
    return bool(json.loads(marker.read_text())["fingerprint"] == fingerprint)


def partials_only(h5: Path, partials: Path, fingerprint: str) -> bool:
    """``H5BuildStage.is_done`` before the H5's size was recorded."""
    if not h5.is_file() or not partials.is_file():
        return False
    return VideoPartials.read(partials).fingerprint == fingerprint


def assert_all(check: Callable[[VideoRef], bool], videos: list[VideoRef]) -> None:
    missed = [video.video_id for video in videos if not check(video)]
    assert not missed, f"{len(missed)} not done, e.g. {missed[:3]}"


if __name__ == "__main__":
    main()
