"""What ``trackset check-models`` does, apart from printing: plan, clip, runs and profiles.

1. **Which stages.** The GPU stages the settings run with ``backend: real``
   (:func:`stages_to_check`); settings without any (the defaults) have every GPU stage they
   run checked as if it were real, since the command is what a user runs before switching.
2. **What is missing.** Each stage's adapter lists, without importing the model, every
   package, weight file and setting it lacks, each naming its install or setting
   (``missing``, the same check a run makes before touching a video); :func:`find_gpus`
   says why there is no GPU. :func:`missing_lines` makes one line of each.
3. **The clip and its truth.** :func:`make_clip` renders one short clip with
   :func:`~trackset.synthetic.corpus.make_corpus`, preprocesses it and runs every GPU stage
   on it with its synthetic backend, which evaluates the scene exactly: true depth and
   cameras, true masks, true tracks, the scene without its hands.
4. **Each stage on each GPU.** A stage is run with its real backend in a copy of that work
   directory (hard links), so it reads the truth as its input: a model is judged alone, not
   through the errors of the models before it. It runs as a worker runs it
   (``setup``, then ``run``, which measures the video's peak memory as DECISIONS.md defines
   it), pinned by ``CUDA_VISIBLE_DEVICES``, in a fresh process per GPU (a process cannot
   change the GPU it sees once CUDA has started, and a fresh process measures only its own
   model). Fake GPUs need no process of their own: their pinning is read at ``setup``.
   Then the output is read back and compared (:mod:`trackset.checks.outputs`).
5. **Profiles.** The highest peak of a stage that ran on every GPU is stored where a run
   looks for it first (:class:`~trackset.scheduling.profile_store.ProfileStore`), under the
   key that run computes from the same settings, so it starts sized instead of profiling
   (each GPU sized from that peak by its own memory).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import import_module
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import torch

from trackset.checks.outputs import Finding, Shape, agreement, contract_checks, read_output
from trackset.config.settings import MetadataSettings, Settings, SyntheticSettings
from trackset.domain import StageName, VideoRef
from trackset.errors import VideoError
from trackset.formats.intermediates import read_frames
from trackset.formats.layout import WorkLayout
from trackset.gpu.allocator import TorchAllocator
from trackset.gpu.inventory import FakeInventory, GpuInfo, NvmlInventory, NvmlUnavailableError
from trackset.scheduling.profile_store import ProfileStore
from trackset.stages.base import Stage
from trackset.stages.config import ModelStageConfig
from trackset.stages.model_stage import ModelStage
from trackset.stages.registry import GPU_STAGES, build_stage, enabled_stages, stage_class, stage_config, stage_spec
from trackset.synthetic.corpus import make_corpus

CLIP_FRAMES = 24
"""Frames of the clip: enough for DiffuEraser (at least 22) and several tracking windows."""

CLIP_SEED = 0
"""Corpus seed of the clip; its scene has two hands and boxes (tests/unit/test_check_models.py)."""

VIDEO_ID = "00000"

MODEL_MODULES: dict[str, str] = {
    "depth_camera": "vipe",
    "tracks_3d": "utils.inference_utils",
    "hands": "wilor",
    "object_masks": "sam3",
    "human_masks": "sam3",
    "clean_frames": "diffueraser.diffueraser",
    "tracks_2d": "cotracker",
}
"""The module of each stage's model whose origin names its version (:func:`model_version`)."""


def stages_to_check(settings: Settings) -> tuple[list[StageName], bool]:
    """The GPU stages a run with ``settings`` includes with ``backend: real``, in pipeline
    order, and False; where it includes none, every GPU stage it includes, and True.

    Examples:
        >>> stages_to_check(Settings(hands={"backend": "real"}))
        (['hands'], False)
        >>> stages_to_check(Settings(h5={"track_type": "2d"}))
        (['object_masks', 'tracks_2d'], True)
    """
    gpu_stages = [name for name in enabled_stages(settings) if name in GPU_STAGES]
    real = [name for name in gpu_stages if getattr(settings, name).backend == "real"]
    return (real, False) if real else (gpu_stages, True)


def with_real_backends(settings: Settings, stages: list[StageName]) -> Settings:
    """``settings`` with ``backend: real`` for ``stages``."""
    update: dict[str, Any] = {name: getattr(settings, name).model_copy(update={"backend": "real"}) for name in stages}
    return settings.model_copy(update=update)


def missing_parts(settings: Settings, stages: list[StageName]) -> dict[StageName, list[str]]:
    """Per stage that lacks something, every package, weight file and setting it lacks (the
    adapter's ``missing``: each a reason naming its install or setting)."""
    missing: dict[StageName, list[str]] = {}
    for stage in stages:
        adapter = import_module(stage_spec(stage).backends["real"].partition(":")[0])
        reasons: list[str] = adapter.missing(getattr(settings, stage))
        if reasons:
            missing[stage] = reasons
    return missing


@dataclass(frozen=True)
class Gpus:
    """The GPUs the models are checked on (index order), or why there are none."""

    kind: Literal["cuda", "fake"]
    infos: list[GpuInfo]
    problem: str | None = None


def find_gpus(settings: Settings, fake: bool) -> Gpus:
    """The GPUs of ``cluster.gpus``: CUDA ones through NVML, or with ``fake`` the fake ones of
    ``cluster.fake_gpus`` (the models then run on the CPU).

    Raises:
        SettingsError: ``cluster.gpus`` names a GPU this machine does not have.
    """
    cluster = settings.cluster
    indices = None if cluster.gpus == "auto" else cluster.gpus
    if fake:
        infos = FakeInventory(cluster, None, indices).gpus()
        return Gpus("fake", sorted(infos, key=lambda gpu: gpu.index), None if infos else "cluster.fake_gpus is empty")
    if not torch.cuda.is_available():
        build = (
            "a CPU-only build"
            if torch.version.cuda is None
            else f"built for CUDA {torch.version.cuda}, but finds no GPU (driver, CUDA_VISIBLE_DEVICES?)"
        )
        return Gpus("cuda", [], f"a CUDA GPU: torch {torch.__version__} is {build}")
    try:
        with NvmlInventory(indices) as inventory:
            infos = inventory.gpus()
    except NvmlUnavailableError as exc:
        return Gpus("cuda", [], f"NVML to read the GPUs' memory: {exc}")
    return Gpus("cuda", sorted(infos, key=lambda gpu: gpu.index), None if infos else "a GPU: NVML lists none")


def missing_lines(stages: list[StageName], missing: dict[StageName, list[str]], gpu_problem: str | None) -> list[str]:
    """A line for each thing a stage lacks (the GPU last), stage by stage.

    Examples:
        >>> for line in missing_lines(["hands", "tracks_3d"], {"hands": ["X", "Y: set Z"]}, "a CUDA GPU: none"):
        ...     print(line)
        hands: needs X
        hands: needs Y: set Z
        hands: needs a CUDA GPU: none
        tracks_3d: needs a CUDA GPU: none
        >>> missing_lines(["hands"], {}, None)
        []
    """
    gpu = [] if gpu_problem is None else [gpu_problem]
    return [f"{stage}: needs {what}" for stage in stages for what in [*missing.get(stage, []), *gpu]]


@dataclass(frozen=True)
class Clip:
    """The synthetic clip and its truth: ``truth`` are the settings its truth was made with
    (every GPU stage synthetic, exact), whose work directory holds every stage's output."""

    video: VideoRef
    truth: Settings
    shape: Shape

    @property
    def truth_dir(self) -> Path:
        return self.truth.paths.work_dir


def truth_settings(settings: Settings, root: Path) -> Settings:
    """``settings`` with every GPU stage synthetic and exact (no noise, no simulated cost), the
    corpus's ``metadata.csv`` and every path under ``root``."""
    exact: dict[str, Any] = {
        name: getattr(settings, name).model_copy(update={"backend": "synthetic"}) for name in GPU_STAGES
    }
    paths = settings.paths.model_copy(
        update={"videos_dir": root / "videos", "work_dir": root / "truth", "dataset_dir": root / "dataset"}
    )
    return settings.model_copy(
        update={**exact, "paths": paths, "synthetic": SyntheticSettings(), "metadata": MetadataSettings()}
    )


def make_clip(root: Path, settings: Settings, frames: int = CLIP_FRAMES) -> Clip:
    """Render the clip under ``root`` at the preprocessed size and rate, and run every stage
    ``settings`` include (but the H5 build) on it with the synthetic backends.

    The synthetic stages charge no memory and are given a CPU allocator, so making the truth
    never touches a GPU.
    """
    truth = truth_settings(settings, root)
    preprocess = settings.preprocess
    [path] = make_corpus(
        truth.paths.videos_dir,
        1,
        seed=CLIP_SEED,
        num_frames=frames,
        fps=preprocess.fps,
        width=preprocess.width,
        height=preprocess.height,
        metadata=True,
    )
    video = VideoRef(VIDEO_ID, path, hashlib.sha256(path.read_bytes()).hexdigest())
    for name in enabled_stages(truth):
        if name == "h5_build":
            continue
        cls, config = stage_class(name), stage_config(name, truth)
        if issubclass(cls, ModelStage) and isinstance(config, ModelStageConfig):
            stage: Stage[Any] = cls(config, allocator=TorchAllocator("cpu"))
        else:
            stage = cls(config)
        stage.setup()
        try:
            stage.run(video)
        finally:
            stage.teardown()
    rendered, _ = read_frames(WorkLayout(truth.paths.work_dir), VIDEO_ID)
    num_frames, height, width = rendered.shape[:3]
    return Clip(video, truth, (num_frames, height, width))


@dataclass(frozen=True)
class CheckJob:
    """One stage on one GPU: ``settings`` are the clip's truth settings with the stage's own
    (real) section and a work directory of its own."""

    stage: StageName
    gpu: int
    settings: Settings
    clip: Clip


def jobs_for(stage: StageName, clip: Clip, settings: Settings, gpus: list[GpuInfo]) -> list[CheckJob]:
    """A job per GPU for ``stage``, run with its section of ``settings``."""
    jobs = []
    for gpu in gpus:
        work_dir = clip.truth_dir.parent / "checks" / f"{stage}-gpu{gpu.index}"
        paths = clip.truth.paths.model_copy(update={"work_dir": work_dir})
        job_settings = clip.truth.model_copy(update={"paths": paths, stage: getattr(settings, stage)})
        jobs.append(CheckJob(stage, gpu.index, job_settings, clip))
    return jobs


@dataclass
class StageCheck:
    """What checking one stage on one GPU found.

    Attributes:
        error: the first line of what stopped the stage (None: it ran); ``details`` holds
            the whole traceback.
        findings: the format checks of its output, the reader's first.
        agreement: how far the output is from the clip's truth, in one phrase.
    """

    stage: StageName
    gpu: int
    version: str = ""
    load_s: float | None = None
    run_s: float | None = None
    peak_bytes: int | None = None
    findings: list[Finding] = field(default_factory=list)
    agreement: str = ""
    error: str | None = None
    details: str = ""

    @property
    def ok(self) -> bool:
        """It ran and every check of its output held."""
        return self.error is None and all(finding.passed for finding in self.findings)

    def fail(self, exc: BaseException) -> StageCheck:
        """Record ``exc`` as what stopped the stage."""
        lines = str(exc).strip().splitlines()
        self.error = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        self.details = "".join(traceback.format_exception(exc))
        return self


def model_version(module_name: str) -> str:
    """Which installation of a model module this process imported: the distribution and its
    version when it came from one (and where it lives, if installed in editable mode), else
    the package's ``__version__``, if any, and the folder it was imported from (a checkout:
    y2r's ``thirdparty/`` copy or upstream's)."""
    module = sys.modules.get(module_name)
    origin = getattr(module, "__file__", None)
    if module is None or origin is None:
        return "not loaded" if module is None else "no file (a stand-in module)"
    file = Path(origin).resolve()
    root = file.parents[module_name.count(".") + (file.name == "__init__.py")]
    top = module_name.partition(".")[0]
    for name in importlib.metadata.packages_distributions().get(top, []):
        dist = importlib.metadata.distribution(name)
        if Path(str(dist.locate_file(""))).resolve() == root:
            return f"{name} {dist.version}"
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("url") == root.as_uri():
            return f"{name} {dist.version} at {root}"
    version = getattr(sys.modules.get(top), "__version__", None)
    return f"{top} {version} at {root}" if isinstance(version, str) else f"{top} at {root}"


def run_job(job: CheckJob) -> StageCheck:
    """Load the stage's model, run it on the clip, read its output back and compare it with
    the truth. Whatever stops the stage is recorded, not raised."""
    result = StageCheck(job.stage, job.gpu)
    video, work = job.clip.video, WorkLayout(job.settings.paths.work_dir)
    shutil.copytree(job.clip.truth_dir, work.root, copy_function=os.link)
    stage = build_stage(job.stage, job.settings)
    for path in [*stage.outputs(video.video_id), stage.marker_path(video.video_id)]:
        path.unlink(missing_ok=True)  # the truth's file, linked in: it must not pass for the model's
    try:
        start = time.perf_counter()
        stage.setup()
        result.load_s = time.perf_counter() - start
        record = stage.run(video)
        result.run_s, result.peak_bytes = record.seconds, record.peak_bytes
    except Exception as exc:  # any model failure is a finding, reported with its traceback
        return result.fail(exc)
    finally:
        result.version = model_version(MODEL_MODULES[job.stage])
        stage.teardown()
    try:
        output = read_output(job.stage, work, video.video_id, job.clip.shape)
    except VideoError as exc:
        result.findings.append(Finding("reads back", False, str(exc)))
        return result
    result.findings = [Finding("reads back", True), *contract_checks(job.stage, output, job.settings, job.clip.shape)]
    truth_work = WorkLayout(job.clip.truth_dir)
    truth = read_output(job.stage, truth_work, video.video_id, job.clip.shape)
    result.agreement = agreement(job.stage, output, truth, truth_work, video.video_id, job.settings)
    return result


PIN = ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES")


@contextmanager
def pinned(gpu: int) -> Iterator[None]:
    """This process sees GPU ``gpu`` only (NVML's index: PCI bus order), as a GPU worker does."""
    saved = {key: os.environ.get(key) for key in PIN}
    os.environ.update({"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(gpu)})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_pinned(job: CheckJob) -> StageCheck:
    """:func:`run_job` pinned to the job's GPU (set before anything here starts CUDA)."""
    with pinned(job.gpu):
        return run_job(job)


def run_jobs(jobs: list[CheckJob], own_processes: bool) -> list[StageCheck]:
    """Run ``jobs`` here one after the other, or each in a new process, all at once (one per
    GPU: run one stage's jobs per call, so a GPU holds one model at a time)."""
    if not own_processes:
        return [run_pinned(job) for job in jobs]
    context = get_context("spawn")  # a fork would inherit this process's CUDA state
    pools = [ProcessPoolExecutor(1, mp_context=context) for _ in jobs]
    try:
        futures = [pool.submit(run_pinned, job) for pool, job in zip(pools, jobs, strict=True)]
        return [_collect(job, future) for job, future in zip(jobs, futures, strict=True)]
    finally:
        for pool in pools:
            pool.shutdown()


def _collect(job: CheckJob, future: Future[StageCheck]) -> StageCheck:
    """A job's result; a process that died (a crash in native code) or a job that could not
    even start becomes that job's error."""
    try:
        return future.result()
    except BrokenProcessPool as exc:
        return StageCheck(job.stage, job.gpu).fail(RuntimeError(f"the process checking it died ({exc})"))
    except Exception as exc:  # e.g. the work directory could not be linked: still one line for this job
        return StageCheck(job.stage, job.gpu).fail(exc)


def save_profiles(results: list[StageCheck], settings: Settings, gpus: list[GpuInfo]) -> dict[StageName, int]:
    """Store each stage's highest peak, where it ran and passed on every GPU and measured one.

    The key is the one a run with ``settings`` computes (the stage's config), so that run
    starts from it, on these GPUs or others.

    Returns:
        The peak stored per stage.
    """
    store = ProfileStore(settings.paths.work_dir)
    stored: dict[StageName, int] = {}
    by_stage: dict[StageName, list[StageCheck]] = {}
    for result in results:
        by_stage.setdefault(result.stage, []).append(result)
    for stage, checks in by_stage.items():
        peaks = [check.peak_bytes or 0 for check in checks]
        if len(checks) == len(gpus) and all(check.ok for check in checks) and min(peaks) > 0:
            store.save(stage, stage_config(stage, settings).cache_key(), max(peaks))
            stored[stage] = max(peaks)
    return stored


def profile_path(settings: Settings, stage: str) -> Path:
    """Where :func:`save_profiles` stores ``stage``'s profile."""
    return ProfileStore(settings.paths.work_dir).path(stage)


def format_findings(result: StageCheck) -> str:
    """``passed/total`` of a result's checks, e.g. ``3/3``; ``-`` when it did not run."""
    if result.error is not None and not result.findings:
        return "-"
    return f"{sum(finding.passed for finding in result.findings)}/{len(result.findings)}"


def describe(result: StageCheck) -> list[str]:
    """Lines for what went wrong with ``result`` (none when it is ok)."""
    lines = [f"{result.stage} on GPU {result.gpu}: {result.error}"] if result.error else []
    lines += [
        f"{result.stage} on GPU {result.gpu}: check '{finding.name}' failed: {finding.detail}"
        for finding in result.findings
        if not finding.passed
    ]
    return lines
