"""The ``trackset`` command line: run the flow, make a synthetic corpus, try the demo.

Commands::

    trackset demo [--out DIR]                 # synthetic corpus -> full flow -> summary
    trackset run --settings settings.yaml [--set h5.target_size=128 ...]
    trackset make-corpus OUT [--videos 6 --frames 40 --seed 0]
    trackset import-intermediates DIR [--dataset-dir D]   # the script pipeline's outputs
    trackset validate DATASET_DIR [--deep]     # layout, ranges, statistics vs partials

Exit status: 0 when every video landed, 1 when some failed (listed), 2 on bad settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trackset.errors import ModelUnavailableError, SettingsError
from trackset.run_report import RunSummary

console = Console()

# What the demo's synthetic models pretend to hold on the (fake) GPUs, after the measured
# footprints of the real models (FORMATS.md: ViPE ~13 GB to load, +1-4 GB per video), so
# the memory profile and the cluster sizing have something real to size. On a CPU machine
# this is bookkeeping on the fake GPUs, not host memory.
DEMO_COSTS = {
    "depth_camera": {"model_mb": 13_000, "per_video_mb": 1_000, "per_frame_mb": 16},
    "tracks_3d": {"model_mb": 6_000, "per_video_mb": 500, "per_frame_mb": 8},
    "hands": {"model_mb": 3_000, "per_video_mb": 200, "per_frame_mb": 4},
}


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["h5.target_size=128"]`` -> ``{"h5": {"target_size": 128}}`` (values parsed as YAML).

    Examples:
        >>> parse_assignments(["h5.target_size=128", "cluster.gpus=[0, 1]"])
        {'h5': {'target_size': 128}, 'cluster': {'gpus': [0, 1]}}
    """
    out: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise SettingsError(f"settings: --set expects key=value, got {assignment!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _rounded(value: object) -> str:
    """A statistic for the terminal: 4 significant digits, lists kept as lists."""
    if isinstance(value, list):
        return "[" + ", ".join(_rounded(v) for v in value) + "]"
    return "none" if value is None else f"{value:.4g}"


def print_summary(summary: RunSummary) -> None:
    """Videos, frames, tracks per frame, seconds per stage and output paths."""
    h5 = next((s for s in summary.stages if s.stage == "h5_build"), None)
    videos = Table(title="Videos built this run")
    for column in ("video", "frames", "windows", "tracks per frame", "H5 file"):
        videos.add_column(column)
    for record in sorted(h5.records if h5 else [], key=lambda r: r.video_id):
        if record.status == "done":
            videos.add_row(
                record.video_id,
                str(record.info.get("frames", "")),
                str(record.info.get("windows", "")),
                str(record.info.get("tracks_per_frame", "")),
                record.outputs[0] if record.outputs else "",
            )
    console.print(videos)
    stages = Table(title="Stages")
    for column in ("stage", "done", "skipped", "failed", "seconds (sum over videos)"):
        stages.add_column(column)
    for outcome in summary.stages:
        stages.add_row(
            outcome.stage,
            str(sum(r.status == "done" for r in outcome.records)),
            str(sum(r.status == "skipped" for r in outcome.records)),
            str(len(outcome.failures)),
            f"{outcome.seconds():.2f}",
        )
    console.print(stages)
    statistics = Table(title="Dataset statistics (normalization_stats.yaml)")
    for column in ("statistic", "samples", "mean", "std"):
        statistics.add_column(column)
    from trackset.statistics import STATISTIC_KEYS  # here: numpy stays out of the CLI's start-up

    for _, name, count_key in STATISTIC_KEYS:
        stats = summary.statistics
        if f"{name}_mean" in stats:
            statistics.add_row(
                name, str(stats.get(count_key)), _rounded(stats[f"{name}_mean"]), _rounded(stats[f"{name}_std"])
            )
    console.print(statistics)
    for failure in summary.failures:
        console.print(f"[red]failed[/red] {failure.video_id} {failure.stage} ({failure.kind}): {failure.reason}")
    dataset = Path(summary.dataset_dir)
    console.print(f"dataset: {dataset.resolve()}  ({summary.videos_total} videos)")
    console.print(f"statistics: {(dataset / 'normalization_stats.yaml').resolve()}")


def _run(settings_path: str | None, overrides: dict[str, Any], import_dir: str | None = None) -> int:
    from flows.build_dataset import VideosFailedError, build_dataset, resolve_settings
    from trackset.adapters import check_real_backends

    settings = resolve_settings(settings_path, overrides)  # fail in one line before Prefect starts
    if import_dir is None:
        check_real_backends(settings)
    try:
        summary = build_dataset(settings_path=settings_path, overrides=overrides, import_dir=import_dir)
    except VideosFailedError as exc:  # run.fail_on_video_error: the rest landed, the run failed
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 1
    print_summary(summary)
    return 1 if summary.failures else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from trackset.synthetic.corpus import make_corpus

    out = Path(args.out)
    videos = out / "videos"
    if not any(videos.glob("*.mp4")):
        console.print(f"making a synthetic corpus of {args.videos} videos in {videos}")
        make_corpus(videos, num_videos=args.videos, num_frames=args.frames, seed=args.seed)
    overrides = {
        "paths": {"videos_dir": str(videos), "work_dir": str(out / "work"), "dataset_dir": str(out / "dataset")},
        "synthetic": DEMO_COSTS,
    }
    return _run(None, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args.settings, parse_assignments(args.set))


def cmd_import(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.set)
    if args.dataset_dir:
        overrides.setdefault("paths", {})["dataset_dir"] = args.dataset_dir
    return _run(args.settings, overrides, import_dir=args.dir)


def cmd_validate(args: argparse.Namespace) -> int:
    from trackset.settings import load_settings
    from trackset.validate import validate_dataset

    settings = load_settings(args.settings)
    report = validate_dataset(Path(args.dataset_dir), settings.h5, settings.statistics.std_floor, deep=args.deep)
    table = Table(title=f"validate {args.dataset_dir}")
    for column in ("file", "status", "detail"):
        table.add_column(column)
    for file, status, detail in report.rows():
        style = "green" if status == "ok" else "red"
        # Details hold ranges like "[0, 1]", which rich would read as markup.
        table.add_row(escape(file), f"[{style}]{status}[/{style}]", escape(detail))
    console.print(table)
    if report.ok:
        console.print("dataset is valid")
        return 0
    console.print(f"[red]{len(report.problems)} problem(s)[/red]")
    return 1


def cmd_make_corpus(args: argparse.Namespace) -> int:
    from trackset.synthetic.corpus import make_corpus

    paths = make_corpus(
        Path(args.out),
        num_videos=args.videos,
        num_frames=args.frames,
        seed=args.seed,
        codec=args.codec,
        container=args.container,
    )
    for path in paths:
        console.print(str(path))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackset", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="make a synthetic corpus and run the full flow on it")
    demo.add_argument("--out", default="demo-output", help="directory for videos/, work/ and dataset/")
    demo.add_argument("--videos", type=int, default=6)
    demo.add_argument("--frames", type=int, default=40)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the build-dataset flow")
    run.add_argument("--settings", default="settings.yaml", help="settings YAML")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    run.set_defaults(func=cmd_run)

    imports = sub.add_parser("import-intermediates", help="build the dataset from the script pipeline's intermediates")
    imports.add_argument("dir", help="directory with frames/, vipe/, tracks_3d/, hand_poses/")
    imports.add_argument("--dataset-dir", help="where the H5 files go (default: paths.dataset_dir)")
    imports.add_argument("--settings", default=None, help="settings YAML")
    imports.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    imports.set_defaults(func=cmd_import)

    validate = sub.add_parser("validate", help="check every H5, the partials and normalization_stats.yaml")
    validate.add_argument("dataset_dir", help="the dataset directory")
    validate.add_argument("--settings", default=None, help="settings YAML the dataset was built with")
    validate.add_argument("--deep", action="store_true", help="also recompute each video's moments from its H5 (slow)")
    validate.set_defaults(func=cmd_validate)

    corpus = sub.add_parser("make-corpus", help="write synthetic videos with ground truth")
    corpus.add_argument("out")
    corpus.add_argument("--videos", type=int, default=6)
    corpus.add_argument("--frames", type=int, default=40)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--codec", default="libx264")
    corpus.add_argument("--container", default="mp4")
    corpus.set_defaults(func=cmd_make_corpus)
    return parser


# Defaults for the temporary Prefect server a flow starts when no PREFECT_API_URL is set: a
# busy 2-core machine needs more than Prefect's 20 s to start it, and telemetry has no
# network to reach. Explicit environment values win.
# Dask's per-worker INFO lines (start, connect, close) drown the run's own log in a terminal.
EPHEMERAL_SERVER_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}


def main(argv: list[str] | None = None) -> int:
    for key, value in EPHEMERAL_SERVER_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SettingsError, ModelUnavailableError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
