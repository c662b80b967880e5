"""The ``trackset`` command line: run the flow, make a synthetic corpus, try the demo.

Commands::

    trackset demo [--out DIR]                 # synthetic corpus -> full flow -> summary
    trackset run --settings settings.yaml [--set h5.target_size=128 ...]
    trackset make-corpus OUT [--videos 6 --frames 40 --seed 0]
    trackset import-intermediates DIR [--dataset-dir D]   # the script pipeline's outputs
    trackset validate DATASET_DIR [--deep]     # layout, ranges, sizes, statistics vs partials
    trackset show VIDEO_ID [--dataset-dir D --out DIR]   # an MP4 and a PNG with the tracks drawn in
    trackset settings [PREFIX]                  # every setting, its default and description
    trackset check-models [--settings S --fake-gpus]   # load and run each real model on a synthetic clip
    trackset secrets [DIR] [--api-host NAME]    # Prefect auth string, Dask and API certificates, made once
    trackset serve [--prefect-file F]           # run the deployments on their schedules, no work pool
    trackset --version

Errors go to stderr, results to stdout; the exit status says which kind of error it was
(:data:`EXIT_CODES`, also in ``trackset --help``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trackset import __version__
from trackset.dataset.lock import DatasetLock, DirectoryBusyError
from trackset.domain import is_video_id
from trackset.errors import ClusterShapeError, ModelUnavailableError, SettingsError
from trackset.reports.run_report import RunSummary

if TYPE_CHECKING:
    from trackset.checks.models import Gpus, StageCheck

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
EXIT_CODES = f"""exit status:
  {EXIT_OK}  done: every video landed (validate: the dataset is valid; show: pictures written;
     check-models: every stage checked ran on every GPU and its output passed)
  {EXIT_FAILED}  some videos failed, each listed with its stage and reason (validate: problems found;
     show: an H5 that cannot be read; check-models: a model failed or broke FORMATS.md)
  {EXIT_USAGE}  bad arguments or settings, every one listed with where its value came from (the
     settings file and line, the TRACKSET_* variable, or the --set assignment), a missing
     real-model package, or a cluster that cannot run the build; nothing was processed
     (check-models: a package, weight file or GPU is missing, one line each)
  {EXIT_BUSY}  the dataset, or its work directory, is in use by another run (named); nothing was processed"""


class UsageError(Exception):
    """An argument names something that is not there (exit status 2, like argparse's errors)."""


def error(message: str) -> None:
    """One error line on stderr (messages hold brackets such as ``[0, 1]``: never markup)."""
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


# What the demo's synthetic models pretend to hold on the (fake) GPUs, after the measured
# footprints of the real models (FORMATS.md: ViPE ~13 GB to load, +1-4 GB per video), so
# the memory profile and the cluster sizing have something real to size. On a CPU machine
# this is bookkeeping on the fake GPUs, not host memory.
DEMO_COSTS = {
    "depth_camera": {"model_mb": 13_000, "per_video_mb": 1_000, "per_frame_mb": 16},
    # SAM3: "~8-10GB per worker" (y2r config.yaml, gsam and gsam_human).
    "object_masks": {"model_mb": 7_000, "per_video_mb": 1_000, "per_frame_mb": 8},
    "human_masks": {"model_mb": 7_000, "per_video_mb": 1_000, "per_frame_mb": 8},
    "clean_frames": {"model_mb": 9_000, "per_video_mb": 2_000, "per_frame_mb": 8},
    "tracks_3d": {"model_mb": 6_000, "per_video_mb": 500, "per_frame_mb": 8},
    "tracks_2d": {"model_mb": 2_000, "per_video_mb": 500, "per_frame_mb": 8},
    "hands": {"model_mb": 3_000, "per_video_mb": 200, "per_frame_mb": 4},
}


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``["h5.target_size=128"]`` -> ``{"h5": {"target_size": 128}}`` (values parsed as YAML).

    Examples:
        >>> parse_assignments(["h5.target_size=128", "cluster.gpus=[0, 1]"])
        {'h5': {'target_size': 128}, 'cluster': {'gpus': [0, 1]}}
    """
    out: dict[str, Any] = {}
    problems = []
    for assignment in assignments:
        try:
            key, value = _assignment(assignment)
            node = out
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ValueError(f"{part} is set to a value by an earlier --set, not to a section")
            node[leaf] = value
        except ValueError as exc:
            problems.append(f"settings: --set {assignment}: {exc}")
    if problems:
        raise SettingsError("\n".join(problems))
    return out


def _assignment(assignment: str) -> tuple[str, Any]:
    """``key=value`` as the dotted key and its value parsed as YAML.

    Examples:
        >>> _assignment("cluster.gpus=[0, 1]")
        ('cluster.gpus', [0, 1])
        >>> _assignment("h5.target_size=[1")
        Traceback (most recent call last):
        ...
        ValueError: the value is not valid YAML: expected ',' or ']', but got '<stream end>' (column 3 of the value)
    """
    key, sep, raw = assignment.partition("=")
    if not sep or not key or "" in key.split("."):
        raise ValueError("expected key=value with a dotted key, e.g. h5.target_size=128")
    try:
        return key, yaml.safe_load(raw)
    except yaml.MarkedYAMLError as exc:
        column = f" (column {exc.problem_mark.column + 1} of the value)" if exc.problem_mark else ""
        raise ValueError(f"the value is not valid YAML: {exc.problem}{column}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"the value is not valid YAML: {exc}") from None


def override_labels(args: argparse.Namespace) -> Callable[[str], str]:
    """How an override is named in an error: the ``--set`` assignment it came from.

    Examples:
        >>> label = override_labels(argparse.Namespace(command="run", set=["h5={target_size: 0}"]))
        >>> label("h5.target_size"), label("run.wave_size")
        ('--set h5={target_size: 0}', 'the overrides (run.wave_size)')
    """
    given: dict[str, str] = {}
    for assignment in getattr(args, "set", None) or []:
        given[assignment.partition("=")[0]] = f"--set {assignment}"
    whose = "the demo's settings" if getattr(args, "command", None) == "demo" else "the overrides"

    def label(key: str) -> str:
        parts = key.split(".")
        for depth in range(len(parts), 0, -1):  # an assignment of a whole section names its keys too
            if ".".join(parts[:depth]) in given:
                return given[".".join(parts[:depth])]
        return f"{whose} ({key})"

    return label


def _rounded(value: object) -> str:
    """A statistic for the terminal: 4 significant digits, lists kept as lists."""
    if isinstance(value, list):
        return "[" + ", ".join(_rounded(v) for v in value) + "]"
    return "none" if value is None else f"{value:.4g}"


def print_summary(summary: RunSummary) -> None:
    """Videos, frames, tracks per frame, seconds per stage and output paths."""
    h5 = summary.stage("h5_build")
    shown = len(h5.sample)
    title = "Videos built this run" if shown == h5.done else f"First {shown} of {h5.done} videos built this run"
    videos = Table(title=title)
    for column in ("video", "frames", "windows", "tracks per frame", "H5 file"):
        videos.add_column(column)
    for record in h5.sample:
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
    for tally in summary.stages:
        stages.add_row(tally.stage, str(tally.done), str(tally.skipped), str(tally.failed), f"{tally.seconds:.2f}")
    console.print(stages)
    statistics = Table(title="Dataset statistics (normalization_stats.yaml)")
    for column in ("statistic", "samples", "mean", "std"):
        statistics.add_column(column)
    from trackset.formats.statistics import STATISTIC_KEYS  # here: numpy stays out of the CLI's start-up

    for _, name, count_key in STATISTIC_KEYS:
        stats = summary.statistics
        if f"{name}_mean" in stats:
            statistics.add_row(
                name, str(stats.get(count_key)), _rounded(stats[f"{name}_mean"]), _rounded(stats[f"{name}_std"])
            )
    console.print(statistics)
    for failure in summary.failures:
        console.print(
            f"[red]failed[/red] {escape(failure.video_id)} {failure.stage} ({failure.kind}): {escape(failure.reason)}",
            highlight=False,
            soft_wrap=True,
        )
    for line in summary.skipped.lines():
        console.print(f"not registered: {escape(line)}", highlight=False, soft_wrap=True)
    dataset = Path(summary.dataset_dir)
    console.print(f"dataset: {dataset.resolve()}  ({summary.videos_total} videos)")
    console.print(f"statistics: {(dataset / 'normalization_stats.yaml').resolve()}")


def _run(settings_path: str | None, overrides: dict[str, Any], import_dir: str | None = None) -> int:
    from trackset.config.settings import load_settings
    from trackset.flows.temporary_server import EarlyServer

    load_settings(settings_path, overrides)  # bad settings fail here, before Prefect is imported
    server = EarlyServer.start_if_needed()  # boots while the flow's modules import
    try:
        from trackset.adapters import check_real_backends
        from trackset.config.overrides import resolve_settings
        from trackset.engine.run_outcome import VideosFailedError
        from trackset.flows.build_dataset import build_dataset
        from trackset.flows.live_progress import live_progress

        settings = resolve_settings(settings_path, overrides)
        if import_dir is None:
            check_real_backends(settings)
        # The flow takes the locks itself; probing them here first turns a dataset or work
        # directory held by another run into one line, without a doomed flow run and its traceback.
        DatasetLock.probe(settings.paths.dataset_dir, work_dir=None if import_dir else settings.paths.work_dir)
    finally:
        server.wait()
    try:
        with live_progress(err_console, sys.stdout, sys.stderr) or nullcontext():
            summary = build_dataset(settings_path=settings_path, overrides=overrides, import_dir=import_dir)
    except VideosFailedError as exc:  # run.fail_on_video_error: the rest landed, the run failed
        error(str(exc))
        return EXIT_FAILED
    print_summary(summary)
    print_pictures(summary)
    if not summary.videos_total:
        warning(f"the dataset has no videos: nothing was registered{_skipped_hint(summary)}")
    if summary.failures:
        report_failures(summary)
        return EXIT_FAILED
    return EXIT_OK


def print_pictures(summary: RunSummary) -> None:
    """Where the pictures of this run's videos are (``run.pictures_videos``), if it drew any."""
    from trackset.reports.pictures import run_pictures

    built = [record.video_id for record in summary.records("h5_build") if record.status == "done"]
    for pictures in run_pictures(Path(summary.dataset_dir), built):
        console.print(
            f"pictures of {pictures.video_id}: {pictures.mp4}  {pictures.png}", highlight=False, soft_wrap=True
        )


def warning(message: str) -> None:
    """One warning line on stderr: the run did what it was asked, but probably not what was meant."""
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def _skipped_hint(summary: RunSummary) -> str:
    """What the empty dataset's folder held instead of videos, if anything."""
    if not summary.skipped.total:
        return ""
    return f" (the videos folder holds {summary.skipped.total} other file(s), listed above; see paths.video_extensions)"


def report_failures(summary: RunSummary, shown: int = 10) -> None:
    """The failed videos on stderr, so a script sees them without parsing the summary."""
    failures = summary.failures
    error(f"{len(failures)} video(s) failed; the others landed")
    for failure in failures[:shown]:
        err_console.print(
            f"  {failure.video_id} {failure.stage} ({failure.kind}): {escape(failure.reason)}", soft_wrap=True
        )
    if len(failures) > shown:
        where = f" in {summary.report_path}" if summary.report_path else ""
        err_console.print(f"  ... and {len(failures) - shown} more{where}", soft_wrap=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from trackset.synthetic.corpus import load_scene_for, make_corpus, write_metadata

    out = Path(args.out)
    videos = out / "videos"
    if not any(videos.glob("*.mp4")):
        console.print(f"making a synthetic corpus of {args.videos} videos in {videos}")
        make_corpus(videos, num_videos=args.videos, num_frames=args.frames, seed=args.seed, metadata=True)
    elif not (videos / "metadata.csv").is_file():  # a corpus made before the demo had texts
        clips = sorted(videos.glob("*.mp4"))
        write_metadata(videos, clips, [load_scene_for(clip) for clip in clips])
    overrides = {
        "paths": {"videos_dir": str(videos), "work_dir": str(out / "work"), "dataset_dir": str(out / "dataset")},
        "synthetic": DEMO_COSTS,
        "h5": {"include_text": True},
        "run": {"pictures_videos": 2},  # <out>/dataset/pictures: two videos drawn (trackset.reports.pictures)
    }
    status = _run(None, overrides)
    print_clips(out / "work", out / "dataset")
    return status


def print_clips(work_dir: Path, dataset_dir: Path) -> None:
    """The demo's clips: text, object-mask prompt and coverage, points per window."""
    from trackset.reports.clip_report import clip_rows

    table = Table(title="Object-masked tracks and texts (root/text)")
    for column in ("video", "prompt", "mask % of pixels", "points per window", "text"):
        table.add_column(column)
    for row in clip_rows(work_dir, dataset_dir):
        cells = (row.video_id, escape(row.prompt), f"{row.mask_percent}", f"{row.points_per_window}", escape(row.text))
        table.add_row(*cells)
    console.print(table)


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args.settings, parse_assignments(args.set))


def cmd_import(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.set)
    if args.dataset_dir:
        overrides.setdefault("paths", {})["dataset_dir"] = args.dataset_dir
    return _run(args.settings, overrides, import_dir=args.dir)


def cmd_settings(args: argparse.Namespace) -> int:
    """Every setting's key, default and description: the ones settings.yaml's comments and the
    run form show (``trackset.config.settings.settings_reference``)."""
    from trackset.config.settings import settings_reference

    reference = settings_reference()
    sections = {key.rpartition(".")[0] for key in reference}
    shown = 0
    for key, info in reference.items():
        if not key.startswith(args.prefix):
            continue
        shown += 1
        default = "" if key in sections else f" = {info.get_default(call_default_factory=True)!r}"
        console.print(
            f"[bold]{key}[/bold]{escape(default)}  {escape(info.description or '')}", highlight=False, soft_wrap=True
        )
    if not shown:
        raise UsageError(f"no setting starts with {args.prefix!r} (trackset settings lists them all)")
    return EXIT_OK


def cmd_secrets(args: argparse.Namespace) -> int:
    """Make what a cluster of several machines and an authenticated Prefect server need, once:
    the Prefect auth string, the Dask cluster's certificates and the Prefect API's HTTPS
    certificate (``trackset.cluster.security``)."""
    from trackset.cluster.security import API_TLS_DIR, AUTH_FILE, TLS_DIR, api_certificate_hosts, write_secrets

    directory = Path(args.dir).expanduser()
    try:
        written, kept = write_secrets(directory, api_hosts=args.api_host)
    except (FileExistsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for path in written:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    for path in kept:
        console.print(f"kept  {path}", highlight=False, soft_wrap=True)
    api_tls = directory / API_TLS_DIR
    named = api_certificate_hosts(api_tls / "cert.pem")
    missing = [host for host in args.api_host or [] if host not in named]
    if missing:
        console.print(
            f"{api_tls / 'cert.pem'} (kept) does not name {', '.join(missing)}: delete {api_tls} and run again "
            "to make one that does (then restart the server; clients read the new ca.pem)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    console.print(
        f"Prefect: server: TRACKSET_SECRETS={directory} deployments/server.sh (HTTPS for {', '.join(named)}); "
        f"CLI, workers and dask workers: export PREFECT_API_URL=https://{named[0]}:4200/api "
        f"PREFECT_API_SSL_CERT_FILE={api_tls / 'ca.pem'} "
        f'PREFECT_API_AUTH_STRING="$(cat {directory / AUTH_FILE})"\n'
        f"Dask: --set cluster.tls_dir={directory / TLS_DIR}, and dask scheduler / dask worker with "
        f"--tls-ca-file {directory / TLS_DIR}/ca.pem --tls-cert {directory / TLS_DIR}/cert.pem "
        f"--tls-key {directory / TLS_DIR}/key.pem (README, 'Several machines')",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from trackset.config.settings import load_settings
    from trackset.dataset.validate import validate_dataset

    settings = load_settings(args.settings)
    if not Path(args.dataset_dir).is_dir():
        raise UsageError(f"no dataset directory {args.dataset_dir}")
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
        return EXIT_OK
    error(f"{len(report.problems)} problem(s) in {args.dataset_dir} (listed above)")
    return EXIT_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    """The deployments of prefect.yaml served by this process (trackset.flows.serve), until Ctrl-C."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise UsageError(
            "trackset serve needs a Prefect server that outlives it: start one and set PREFECT_API_URL "
            "(README, Run it with Prefect)"
        )
    from trackset.flows.automations import AutomationSetupError
    from trackset.flows.serve import ServeSetupError, prepare, serve_deployments

    try:
        deployments, done = prepare(Path(args.prefect_file))
    except (ServeSetupError, AutomationSetupError) as exc:
        raise UsageError(str(exc)) from None
    for line in done:
        console.print(escape(line), highlight=False, soft_wrap=True)
    serve_deployments(deployments, limit=args.limit)
    return EXIT_OK


def video_id_argument(text: str) -> str:
    """A video id as the dataset names it; a bare number is padded (``42`` -> ``00042``).

    Examples:
        >>> video_id_argument("42"), video_id_argument("00042"), video_id_argument("123456")
        ('00042', '00042', '123456')
    """
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a video id (digits, e.g. 00042): {text!r}")
    padded = f"{int(text):05d}"
    if not is_video_id(padded):
        raise argparse.ArgumentTypeError(f"not a video id: {text!r}")
    return padded


def cmd_show(args: argparse.Namespace) -> int:
    from trackset.config.settings import load_settings
    from trackset.formats.layout import DatasetLayout
    from trackset.reports.pictures import pictures_dir, write_pictures

    settings = load_settings(args.settings)
    dataset = Path(args.dataset_dir) if args.dataset_dir else settings.paths.dataset_dir
    out = Path(args.out) if args.out else pictures_dir(dataset)
    status = EXIT_OK
    for video_id in args.video_ids:
        try:
            paths = write_pictures(dataset, video_id, out, settings.h5)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        except (OSError, KeyError) as exc:  # a corrupt or incomplete H5: that video failed
            error(f"video {video_id}: cannot draw {DatasetLayout(dataset).h5(video_id)}: {exc}")
            status = EXIT_FAILED
            continue
        for path in paths:
            console.print(str(path), highlight=False, soft_wrap=True)
    return status


def cmd_make_corpus(args: argparse.Namespace) -> int:
    from trackset.synthetic.corpus import make_corpus

    paths = make_corpus(
        Path(args.out),
        num_videos=args.videos,
        num_frames=args.frames,
        seed=args.seed,
        codec=args.codec,
        container=args.container,
        metadata=True,
    )
    for path in paths:
        console.print(str(path))
    return 0


def cmd_check_models(args: argparse.Namespace) -> int:
    """Load and run the real model of each GPU stage on a synthetic clip, on every GPU
    (:mod:`trackset.checks.models`); print what ran, what is missing and what failed."""
    from trackset.checks import models as checks
    from trackset.config.settings import load_settings
    from trackset.gpu.fake_device import format_size
    from trackset.gpu.memory_probe import device_kind

    frames = checks.CLIP_FRAMES if args.frames is None else args.frames
    if frames < checks.CLIP_FRAMES:
        raise UsageError(
            f"--frames must be at least {checks.CLIP_FRAMES}, the default (DiffuEraser needs 22 frames, the "
            "trackers several windows)"
        )
    settings = load_settings(args.settings, parse_assignments(args.set))
    stages, assumed = checks.stages_to_check(settings)
    if assumed:
        console.print(
            f"no GPU stage has backend: real in these settings; checking the real model of each: {', '.join(stages)}",
            highlight=False,
            soft_wrap=True,
        )
    settings = checks.with_real_backends(settings, stages)
    if args.fake_gpus and device_kind() == "cuda":
        raise UsageError("--fake-gpus stands in for GPUs where there are none; this machine has CUDA GPUs")
    gpus = checks.find_gpus(settings, fake=args.fake_gpus)
    missing = checks.missing_parts(settings, stages)
    runnable = [stage for stage in stages if stage not in missing] if gpus.infos else []
    results: list[StageCheck] = []
    if runnable:
        console.print(
            f"checking {', '.join(runnable)} on {len(gpus.infos)} GPU(s) with a {frames}-frame synthetic clip",
            highlight=False,
            soft_wrap=True,
        )
        with tempfile.TemporaryDirectory(prefix="trackset-check-models-") as tmp:
            clip = checks.make_clip(Path(tmp), settings, frames)
            for stage in runnable:
                jobs = checks.jobs_for(stage, clip, settings, gpus.infos)
                results += checks.run_jobs(jobs, own_processes=gpus.kind == "cuda")
        print_checks(results, gpus, clip.shape)
        stored = checks.save_profiles(results, settings, gpus.infos)
        for stage, peak in stored.items():
            console.print(
                f"memory profile of {stage}: {format_size(peak)} in {checks.profile_path(settings, stage)}; "
                f"a run with these settings starts from it, each GPU sized by its own memory "
                f"(a {clip.shape[0]}-frame clip: "
                "longer videos need more memory, see --frames)",
                highlight=False,
                soft_wrap=True,
            )
    for line in checks.missing_lines(stages, missing, gpus.problem):
        error(line)
    failed = [result for result in results if not result.ok]
    for result in failed:
        for line in checks.describe(result):
            error(line)
    for result in failed:
        if result.details:
            err_console.print(
                f"{result.stage} on GPU {result.gpu}:\n{escape(result.details)}", highlight=False, soft_wrap=True
            )
    if missing or gpus.problem:
        return EXIT_USAGE
    return EXIT_FAILED if failed else EXIT_OK


def print_checks(results: list[StageCheck], gpus: Gpus, shape: tuple[int, int, int]) -> None:
    """The table of ``trackset check-models``: a row per stage and GPU."""
    from trackset.checks.models import format_findings
    from trackset.gpu.fake_device import format_size

    names = {gpu.index: gpu.name for gpu in gpus.infos}
    frames, height, width = shape
    title = f"Real models on a {frames}-frame {width}x{height} synthetic clip"
    if gpus.kind == "fake":
        title += " (fake GPUs: the models ran on the CPU; memory is what they charged the fake GPUs)"
    table = Table(title=title)
    for column in ("stage", "backend", "GPU", "load s", "clip s", "peak GPU memory", "checks", "agreement with truth"):
        table.add_column(column)
    for result in results:
        table.add_row(
            result.stage,
            escape(f"real: {result.version}"),
            escape(f"{result.gpu} {names.get(result.gpu, '')}"),
            "-" if result.load_s is None else f"{result.load_s:.1f}",
            "-" if result.run_s is None else f"{result.run_s:.1f}",
            "-" if result.peak_bytes is None else format_size(result.peak_bytes),
            format_findings(result),
            escape(result.agreement or (result.error or "")),
        )
    console.print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trackset",
        description="Raw videos to an HDF5 dataset of point tracks: run the flow, make a synthetic corpus, "
        "try the demo, check a dataset, look at a video's tracks.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="make a synthetic corpus and run the full flow on it")
    demo.add_argument("--out", default="demo-output", help="directory for videos/, work/ and dataset/")
    demo.add_argument("--videos", type=int, default=6)
    demo.add_argument("--frames", type=int, default=40)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the build-dataset flow")
    run.add_argument("--settings", default="settings.yaml", help="settings YAML")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (keys: trackset settings)"
    )
    run.set_defaults(func=cmd_run)

    imports = sub.add_parser("import-intermediates", help="build the dataset from the script pipeline's intermediates")
    imports.add_argument("dir", help="directory with frames/, vipe/, tracks_3d/, hand_poses/")
    imports.add_argument("--dataset-dir", help="where the H5 files go (default: paths.dataset_dir)")
    imports.add_argument("--settings", default=None, help="settings YAML")
    imports.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (keys: trackset settings)"
    )
    imports.set_defaults(func=cmd_import)

    validate = sub.add_parser("validate", help="check every H5, the partials and normalization_stats.yaml")
    validate.add_argument("dataset_dir", help="the dataset directory")
    validate.add_argument("--settings", default=None, help="settings YAML the dataset was built with")
    validate.add_argument(
        "--deep",
        action="store_true",
        help="also recompute each video's moments from its H5 and compare its sha256 with its partials' (slow)",
    )
    validate.set_defaults(func=cmd_validate)

    corpus = sub.add_parser("make-corpus", help="write synthetic videos with ground truth")
    corpus.add_argument("out")
    corpus.add_argument("--videos", type=int, default=6)
    corpus.add_argument("--frames", type=int, default=40)
    corpus.add_argument("--seed", type=int, default=0)
    corpus.add_argument("--codec", default="libx264")
    corpus.add_argument("--container", default="mp4")
    corpus.set_defaults(func=cmd_make_corpus)

    check = sub.add_parser(
        "check-models",
        help="load each real model (backend: real) on every GPU and run it on a synthetic clip: "
        "what is missing, seconds, peak memory, format checks, agreement with the clip's truth",
    )
    check.add_argument("--settings", default="settings.yaml", help="settings YAML")
    check.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (keys: trackset settings)"
    )
    check.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames of the clip, at least and by default 24 (more: closer profiles)",
    )
    check.add_argument(
        "--fake-gpus",
        action="store_true",
        help="on a machine without a GPU: stand in cluster.fake_gpus for GPUs, the models run on the CPU",
    )
    check.set_defaults(func=cmd_check_models)

    secrets = sub.add_parser(
        "secrets",
        help="make the Prefect auth string, the Dask cluster's and the API's certificates (0600, kept if there)",
    )
    secrets.add_argument(
        "dir", nargs="?", default="~/.config/trackset", help="where (default ~/.config/trackset; shared by every host)"
    )
    secrets.add_argument(
        "--api-host",
        action="append",
        metavar="NAME_OR_IP",
        help=(
            "a name or IP address clients use for the Prefect API (https://NAME:4200/api), repeatable; default: "
            "this host's name, its FQDN, localhost, 127.0.0.1. Read only when the certificate is made"
        ),
    )
    secrets.set_defaults(func=cmd_secrets)

    reference = sub.add_parser(
        "settings", help="list every setting: its key for --set and TRACKSET_*, default and description"
    )
    reference.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. h5 or cluster.")
    reference.set_defaults(func=cmd_settings)

    show = sub.add_parser("show", help="draw a video's tracks, camera motion and wrists into an MP4 and a PNG")
    show.add_argument("video_ids", nargs="+", type=video_id_argument, metavar="VIDEO_ID", help="e.g. 00042 or 42")
    show.add_argument("--dataset-dir", help="the dataset directory (default: paths.dataset_dir)")
    show.add_argument("--out", help="where the pictures go (default: <dataset dir>/pictures)")
    show.add_argument("--settings", default=None, help="settings YAML (its h5 depth range colours the points)")
    show.set_defaults(func=cmd_show)

    served = sub.add_parser(
        "serve", help="run the deployments of prefect.yaml from this process on their schedules (no work pool)"
    )
    served.add_argument("--prefect-file", default="deployments/prefect.yaml", help="the deployments to serve")
    served.add_argument("--limit", type=int, default=None, help="most runs at once (default: no limit)")
    served.set_defaults(func=cmd_serve)
    for command in sub.choices.values():
        command.epilog, command.formatter_class = EXIT_CODES, argparse.RawDescriptionHelpFormatter
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
    """Run one command; returns its exit status (:data:`EXIT_CODES`), errors on stderr."""
    for key, value in EPHEMERAL_SERVER_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors (2, on stderr), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except SettingsError as exc:
        for line in exc.lines(override_labels(args)):
            error(line)
        return EXIT_USAGE
    except (ModelUnavailableError, ClusterShapeError, UsageError) as exc:
        error(str(exc))
        return EXIT_USAGE
    except DirectoryBusyError as exc:
        error(str(exc))
        return EXIT_BUSY


if __name__ == "__main__":
    sys.exit(main())
