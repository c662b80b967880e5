"""End to end against the script pipeline on its own inputs: ``trackset import-intermediates``
vs hgupt3/y2r's unmodified ``dataset_scripts/create_h5_dataset.py``, in videos per second.

    .venv/bin/python bench/vs_script.py --script-dir /tmp/y2r --out /tmp/trackset-vs-script
    .venv/bin/python bench/vs_script.py --script-dir /tmp/y2r --out /tmp/trackset-vs-script --fixed-costs

``--script-dir`` is a checkout of hgupt3/y2r (its ``dataset_scripts/`` is what is run;
without it the script's side is skipped with a message). The script needs omegaconf, tqdm
and pandas: ``.venv/bin/pip install -e '.[bench]'``.

Inputs: ``--scenes`` synthetic scenes of ``--frames`` frames are built once with the
project's synthetic stages and rewritten in the script pipeline's formats
(:mod:`trackset.synthetic.script_format`: PNG frames, a compressed depth npz, numpy ``.pt``
files); a data directory of N videos holds video i as scene ``i % scenes`` under its own
id. All of it is cached under ``--out``.

Each repeat runs, for every N of ``--videos``, trackset (with each of ``--runners``) and
then the script, interleaved, each into a fresh output directory, as the user would run
them: trackset as the ``trackset`` command with no ``PREFECT_API_URL`` (so it starts its
temporary server), the script as ``python create_h5_dataset.py`` in a directory holding
its own ``config.yaml`` with only the paths, the video count and ``continue: false``
changed and its sequential mode (``use_adaptive_workers: false``; 2 adaptive workers gave
0.94x on this machine class, PLATFORM-NOTES.md). Wall time covers the whole command. The
first video of each N is compared: root/video and root/depth must be bit-identical.

``--before DIR`` also runs trackset from an earlier checkout (``git worktree add DIR
<commit>``; imported through ``PYTHONPATH``) at the N of ``--before-videos``, interleaved
with the rest, so the change is measured in the same run.

``--running-server`` also runs trackset with ``PREFECT_API_URL`` pointing at a Prefect server
the benchmark started once before the runs (what a user with a server, README "A production
server", pays): the temporary server's start and stop are then not part of a run.

``--phases`` instead times each step of the H5 stage on the import path (PNG decode, the
``.pt`` reads and conversions included) over the first N of ``--videos``, in this process
(``bench/h5_stage.py``'s ``phases``).

``--fixed-costs`` instead runs one import in this process, with timers around what a run
pays whatever its size (module imports, the temporary Prefect server, registration, the
Dask cluster, the waves subflow minus the H5 stage's own work, statistics).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from trackset.domain import VideoRef

# The synthetic scenes' modules (torch, cv2) are imported where they are used: Dask's Nanny
# spawns workers that import this script again as their main module, and ``--fixed-costs``
# would otherwise time the cluster's start with torch imported twice more on the same cores.

VENV_BIN = Path(sys.executable).parent


def prepare_scenes(out: Path, scenes: int, frames: int) -> Path:
    """``scenes`` synthetic videos built by trackset's synthetic stages, then rewritten in the
    script's formats into ``<out>/scenes-<scenes>x<frames>``; made once, reused later."""
    from trackset.cluster.worker_cache import get_stage, release_stages
    from trackset.config.settings import load_settings
    from trackset.stages.registry import enabled_stages, stage_config
    from trackset.synthetic.corpus import make_corpus
    from trackset.synthetic.script_format import write_script_format

    target = out / f"scenes-{scenes}x{frames}"
    if (target / "complete").is_file():
        return target
    build = out / f"build-{scenes}x{frames}"
    shutil.rmtree(build, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    print(f"building {scenes} synthetic scenes of {frames} frames once (cached in {target})", flush=True)
    videos = make_corpus(build / "videos", scenes, seed=19, num_frames=frames, processes=2, metadata=True)
    paths = {"videos_dir": str(build / "videos"), "work_dir": str(build / "work"), "dataset_dir": str(build / "ds")}
    settings = load_settings(overrides={"paths": paths})
    refs = [VideoRef(f"{i:05d}", p, hashlib.sha256(p.read_bytes()).hexdigest()) for i, p in enumerate(videos)]
    for stage in enabled_stages(settings):
        if stage == "h5_build":
            continue
        runner = get_stage(stage, stage_config(stage, settings))
        for ref in refs:
            record = runner.run(ref)
            assert record.status in ("done", "skipped"), record
        release_stages(stage)
    for ref, video in zip(refs, videos, strict=True):
        write_script_format(video, build / "work", ref.video_id, target)
    shutil.rmtree(build)
    (target / "complete").write_text("")
    return target


def data_dir(out: Path, scenes_dir: Path, scenes: int, videos: int) -> Path:
    """A script data directory of ``videos`` videos, video i a copy of scene ``i % scenes``."""
    from trackset.synthetic.script_format import copy_video

    target = out / f"data-{scenes_dir.name}-{videos}"
    if (target / "complete").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    for index in range(videos):
        copy_video(scenes_dir, f"{index % scenes:05d}", target, f"{index:05d}")
    (target / "complete").write_text("")
    return target


def script_config(script_dir: Path, data: Path, output: Path, videos: int) -> dict[str, Any]:
    """The script's own config.yaml with only paths, video count, resume and worker mode set."""
    config = yaml.safe_load((script_dir / "dataset_scripts" / "config.yaml").read_text())
    config["common"]["base_data_dir"] = str(data)
    config["common"]["save_h5_dir"] = str(output)
    config["common"]["num_videos_to_process"] = videos
    config["common"]["continue"] = False
    config["optimization"]["use_adaptive_workers"] = False
    return config


def clean_env(code: Path | None = None) -> dict[str, str]:
    """This environment without a Prefect API: trackset starts its temporary server, as for a
    user. With ``code``, trackset is imported from that checkout instead of this one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return env


def run_trackset(data: Path, output: Path, runner: str, code: Path | None = None, api_url: str | None = None) -> float:
    """Wall seconds of ``trackset import-intermediates`` into a fresh ``output`` (from the
    checkout ``code`` where given; reporting to the server at ``api_url`` where given, else
    to the temporary server the command starts)."""
    shutil.rmtree(output, ignore_errors=True)
    command = [str(VENV_BIN / "trackset"), "import-intermediates", str(data), "--dataset-dir", str(output)]
    command += ["--set", f"cluster.runner={runner}"]
    env = clean_env(code) | ({"PREFECT_API_URL": api_url} if api_url else {})
    return timed_command(command, Path.cwd(), output.with_suffix(".log"), env)


def run_script(script_dir: Path, data: Path, output: Path, videos: int) -> float:
    """Wall seconds of the unmodified ``create_h5_dataset.py`` in a directory with its config."""
    shutil.rmtree(output, ignore_errors=True)
    cwd = output.with_name(output.name + "-cwd")
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    (cwd / "config.yaml").write_text(yaml.safe_dump(script_config(script_dir, data, output, videos)))
    command = [sys.executable, str(script_dir / "dataset_scripts" / "create_h5_dataset.py")]
    return timed_command(command, cwd, output.with_suffix(".log"), clean_env())


def timed_command(command: list[str], cwd: Path, log: Path, env: dict[str, str]) -> float:
    """Run ``command`` (output to ``log``); its wall seconds, or exit naming the log on failure."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        status = subprocess.run(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{command[0]} {command[1]} failed ({status}); see {log}")
    return seconds


def same_video_and_depth(trackset_h5: Path, script_h5: Path) -> bool:
    """root/video and root/depth equal byte for byte in both files."""
    with h5py.File(trackset_h5) as ours, h5py.File(script_h5) as theirs:
        return all(
            ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key][()], theirs[key][()])
            for key in ("root/video", "root/depth")
        )


def compare(args: argparse.Namespace, scenes_dir: Path) -> None:
    """Interleaved runs of both, videos/s at each N, and the ratio."""
    script_dir: Path | None = args.script_dir
    if script_dir is None or not (script_dir / "dataset_scripts" / "create_h5_dataset.py").is_file():
        print(f"no dataset_scripts/create_h5_dataset.py under --script-dir {script_dir}: the script's side is skipped")
        script_dir = None
    walls: dict[tuple[str, int], list[float]] = {}
    datas = {n: data_dir(args.out, scenes_dir, args.scenes, n) for n in args.videos}
    with running_server(args.running_server) as api_url:
        for repeat in range(args.repeats):
            for n, data in datas.items():
                compare_once(args, script_dir, walls, repeat, n, data, api_url)
    print_comparison(args, scenes_dir, walls, compared=script_dir is not None)


@contextmanager
def running_server(wanted: bool) -> Iterator[str | None]:
    """A Prefect server for the runs of ``--running-server`` (its API URL), else None.

    Started once, outside every timed run, as a user with a Prefect server has one running.
    """
    if not wanted:
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    try:
        yield server.api_url
    finally:
        server.stop()


def compare_once(
    args: argparse.Namespace,
    script_dir: Path | None,
    walls: dict[tuple[str, int], list[float]],
    repeat: int,
    n: int,
    data: Path,
    api_url: str | None,
) -> None:
    """One repeat at N videos: each trackset variant, then the script, appended to ``walls``."""

    def record(name: str, seconds: float) -> None:
        walls.setdefault((name, n), []).append(seconds)
        print(f"repeat {repeat + 1} N={n} {name}: {seconds:.2f} s", flush=True)

    for runner in args.runners:
        record(f"trackset ({runner})", run_trackset(data, args.out / f"trackset-{runner}-{n}", runner))
        if api_url is not None:
            output = args.out / f"trackset-{runner}-server-{n}"
            record(f"trackset ({runner}, server running)", run_trackset(data, output, runner, api_url=api_url))
        if args.before is not None and n in args.before_videos:
            output = args.out / f"before-{runner}-{n}"
            record(f"trackset before ({runner})", run_trackset(data, output, runner, args.before))
    if script_dir is not None:
        record("script", run_script(script_dir, data, args.out / f"script-{n}", n))
        first = "00000.hdf5"
        for runner in args.runners:
            same = same_video_and_depth(args.out / f"trackset-{runner}-{n}" / first, args.out / f"script-{n}" / first)
            assert same, f"root/video or root/depth of {first} differ (trackset {runner} vs script, N={n})"


def print_comparison(
    args: argparse.Namespace, scenes_dir: Path, walls: dict[tuple[str, int], list[float]], compared: bool
) -> None:
    """The markdown table of every variant's wall seconds, videos/s and ratio to the script."""
    frames = sum(len(list((scenes_dir / "frames" / f"{i:05d}").glob("*.png"))) for i in range(args.scenes))
    print(
        f"\n{args.scenes} scenes, {frames} frames ({frames / args.scenes:.0f} per video, 512x384 -> 256), "
        f"cpu_count={os.cpu_count()}, {args.repeats} interleaved repeats; wall s of the whole command"
    )
    print("| N videos | command | wall s (each run) | median s | videos/s | vs script |")
    print("|---|---|---|---|---|---|")
    for n in args.videos:
        script = walls.get(("script", n))
        for (name, count), seconds in walls.items():
            if count != n:
                continue
            median = statistics.median(seconds)
            ratio = f"{statistics.median(script) / median:.2f}x" if script else "-"
            each = ", ".join(f"{s:.1f}" for s in seconds)
            print(f"| {n} | {name} | {each} | {median:.2f} | {n / median:.3f} | {ratio} |")
    if compared:
        print("root/video and root/depth of video 00000: bit-identical to the script's at every N")


@contextmanager
def timing(spent: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - start


def wrap(owner: Any, attribute: str, spent: dict[str, float], name: str) -> None:
    """Replace ``owner.attribute`` by the same callable timed into ``spent[name]``."""
    original: Callable[..., Any] = getattr(owner, attribute)

    def timed(*args: Any, **kwargs: Any) -> Any:
        with timing(spent, name):
            return original(*args, **kwargs)

    setattr(owner, attribute, timed)


def fixed_costs(args: argparse.Namespace, scenes_dir: Path) -> None:
    """One import of the first N of ``--videos`` in this process, each fixed cost timed."""
    for key in [k for k in os.environ if k.startswith("PREFECT_API_")]:
        del os.environ[key]
    spent: dict[str, float] = {}
    start = time.perf_counter()
    with timing(spent, "import trackset.flows.cli, trackset.flows.build_dataset (prefect, dask, torch)"):
        from prefect.server.api.server import SubprocessASGIServer

        import trackset.flows.build_dataset as build_module
        import trackset.flows.cli as cli
        import trackset.tasks.dataset_tasks as dataset_tasks
        from trackset.engine.run_cluster import RunCluster
    wrap(SubprocessASGIServer, "start", spent, "temporary Prefect server start")
    wrap(SubprocessASGIServer, "stop", spent, "temporary Prefect server stop")
    wrap(dataset_tasks, "import_intermediates", spent, "registration (scan, fingerprints, manifest), task body")
    wrap(dataset_tasks, "write_dataset_files", spent, "statistics and dataset.json, task body")
    wrap(RunCluster, "__enter__", spent, "run cluster start (Dask: SpecCluster + workers)")
    wrap(RunCluster, "__exit__", spent, "run cluster close")
    waves = build_module.process_waves

    class TimedWaves:
        """``process_waves`` whose runs are timed (the flow looks it up on the module)."""

        def with_options(self, **options: Any) -> Callable[..., Any]:
            flow = waves.with_options(**options)

            def run(*a: Any, **k: Any) -> Any:
                with timing(spent, "process-waves subflow, whole"):
                    return flow(*a, **k)

            return run

    build_module.process_waves = TimedWaves()  # type: ignore[assignment]
    summaries: list[Any] = []
    show = cli.print_summary
    cli.print_summary = lambda summary: (summaries.append(summary), show(summary))[-1]
    n = args.videos[0]
    data = data_dir(args.out, scenes_dir, args.scenes, n)
    output = args.out / f"fixed-{args.runners[0]}-{n}"
    shutil.rmtree(output, ignore_errors=True)
    argv = [
        "import-intermediates",
        str(data),
        "--dataset-dir",
        str(output),
        "--set",
        f"cluster.runner={args.runners[0]}",
    ]
    with timing(spent, "whole command (cli.main)"):
        status = cli.main(argv)
    assert status == 0, status
    total = time.perf_counter() - start
    h5_seconds = sum(r.seconds or 0.0 for r in summaries[0].records("h5_build"))
    spent["H5 stage work, summed over videos (StageRecord.seconds)"] = h5_seconds
    print(f"\nFixed costs of one import of {n} videos, runner {args.runners[0]}, cpu_count={os.cpu_count()}")
    print("| what | s |")
    print("|---|---|")
    for name, seconds in spent.items():
        print(f"| {name} | {seconds:.2f} |")
    print(f"| wall in this process, imports included | {total:.2f} |")


# The import path's own steps, timed by --phases beside the H5 stage's (bench/h5_stage.py).
IMPORT_PHASES = {
    "trackset.stages.h5_build": ("to_trackset_conventions",),
    "trackset.formats.intermediates": ("_read_png_frames", "load_pt"),
}


def import_phases(args: argparse.Namespace, scenes_dir: Path) -> None:
    """Seconds per video of each step of an import's H5 stage, in this process."""
    from h5_stage import phases  # bench/ is this script's directory, first on sys.path

    from trackset.config.settings import load_settings
    from trackset.dataset.registration import import_intermediates

    n = args.videos[0]
    data = data_dir(args.out, scenes_dir, args.scenes, n)
    paths = {"work_dir": str(data), "videos_dir": str(data), "dataset_dir": str(args.out / f"phases-{n}")}
    settings = load_settings(overrides={"paths": paths})
    shutil.rmtree(settings.paths.dataset_dir, ignore_errors=True)
    refs = import_intermediates(settings).pending
    phases(settings, refs, IMPORT_PHASES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script-dir", type=Path, default=None, help="a checkout of hgupt3/y2r")
    parser.add_argument("--out", type=Path, default=Path("/tmp/trackset-vs-script"))
    parser.add_argument("--videos", type=int, nargs="+", default=[5, 50], help="data directory sizes to run")
    parser.add_argument("--scenes", type=int, default=5, help="distinct synthetic scenes the videos cycle through")
    parser.add_argument("--frames", type=int, default=187, help="frames per video (the issue's 937 / 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runners", nargs="+", default=["dask", "threads"], choices=["dask", "threads"])
    parser.add_argument("--fixed-costs", action="store_true", help="time one run's fixed costs instead")
    parser.add_argument("--phases", action="store_true", help="time the import's H5 steps instead")
    parser.add_argument("--before", type=Path, default=None, help="a checkout of an earlier trackset, run too")
    parser.add_argument("--before-videos", type=int, nargs="+", default=[5], help="the N at which --before runs")
    parser.add_argument(
        "--running-server", action="store_true", help="also run trackset against a Prefect server already running"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scenes_dir = prepare_scenes(args.out, args.scenes, args.frames)
    if args.fixed_costs:
        fixed_costs(args, scenes_dir)
    elif args.phases:
        import_phases(args, scenes_dir)
    else:
        compare(args, scenes_dir)


if __name__ == "__main__":
    main()
