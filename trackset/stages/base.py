"""The unit of work: a stage processes one video and writes its FORMATS.md contract.

A stage works in the manner of NeMo Curator's ``ProcessingStage``: typed knobs (its
:mod:`~trackset.stages.config` model), ``setup()`` that loads the model once per worker
process, ``process()`` per video and ``teardown()`` that frees memory. Stages never
schedule themselves and never import Prefect; ``tasks/`` wraps them and ``flows/``
schedules them.

Completion is recorded by a marker written after the outputs have been renamed into place.
It holds the stage's *fingerprint* (a hash of the source content and of every setting that
changes the output, chained through the upstream stages) and the size and checksum of each
output (:mod:`trackset.formats.markers`), so a resumed run skips exactly the videos whose
outputs are complete, whole and still valid.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from trackset.domain import StageName, StageRecord, VideoFailure, VideoRef
from trackset.errors import VideoError
from trackset.formats.layout import DatasetLayout, WorkLayout
from trackset.formats.markers import Marker
from trackset.formats.npy import open_npy
from trackset.stages.config import StageConfig

ConfigT = TypeVar("ConfigT", bound=StageConfig)

logger = logging.getLogger(__name__)


def worker_name() -> str:
    """Name of this worker for the stage tables: the Dask worker's name, else host:pid."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


class Stage(ABC, Generic[ConfigT]):
    """One stage of the pipeline, built from its :class:`~trackset.stages.config.StageConfig`.

    Its row in :mod:`trackset.stages.registry` says what it needs to run (resources,
    backends); the stage itself only knows how to turn one video's inputs into outputs.
    """

    name: ClassVar[StageName]

    def __init__(self, config: ConfigT) -> None:
        self.config = config
        self.work = WorkLayout(config.paths.work_dir)
        self.dataset = DatasetLayout(config.paths.dataset_dir)

    def setup(self) -> None:
        """Load models once per worker process; called before the first ``process``."""

    def teardown(self) -> None:
        """Release what ``setup`` took (CUDA memory above all) when the stage ends."""

    @abstractmethod
    def outputs(self, video_id: str) -> list[Path]:
        """Files this stage writes for a video (all must exist for it to count as done)."""

    @abstractmethod
    def process(self, video: VideoRef) -> dict[str, float | int | str]:
        """Write this stage's outputs for ``video`` atomically; return small info numbers."""

    def memory_probe(self) -> AbstractContextManager[Any]:
        """Measures one video's peak device memory (``.peak_bytes``); CPU stages measure none."""
        return nullcontext()

    def frame_count(self, video: VideoRef) -> int | None:
        """Frames of ``video`` this stage works on, for its time budget (``timeouts``); None if unknown.

        Read from the header of the preprocessed ``frames.npy`` (no pixels are loaded).
        """
        try:
            return int(open_npy(self.work.frames_npy(video.video_id)).shape[0])
        except (OSError, ValueError, IndexError, EOFError):  # EOFError: an empty file
            return None

    def needs_gpu(self, video: VideoRef) -> bool:
        """Whether ``video``'s outputs take work on a GPU worker (GPU stages only ask).

        A video whose outputs need no model (an unprompted clip's file without masks) is
        run by the flow where it plans the wave, without a task: at 50,000 such videos a
        task each would cost ~5,000 chunk task runs and leave the GPUs idle through every
        one's Prefect start and end for ~3 ms of work (BENCHMARKS.md, waves).
        """
        return True

    def intermediate_paths(self, video_id: str) -> list[Path]:
        """What ``run.keep_intermediates`` deletes of this stage once the video's H5 is durable."""
        return self.outputs(video_id)

    def was_deleted(self, video: VideoRef) -> bool:
        """True when the marker is current but outputs are gone: they were deleted on purpose
        (:mod:`trackset.dataset.retention`), so recomputing them means going back to the source."""
        marker = self.marker_path(video.video_id)
        if not marker.is_file() or all(p.is_file() for p in self.outputs(video.video_id)):
            return False
        try:
            return Marker.read(marker).fingerprint == self.fingerprint(video)
        except (ValueError, FileNotFoundError):
            return False

    def fingerprint(self, video: VideoRef) -> str:
        """What ``video``'s completion marker records: its content, the settings of this stage
        and everything upstream, and its ``metadata.csv`` values these read."""
        return self.config.video_fingerprint(video)

    def marker_path(self, video_id: str) -> Path:
        return self.work.marker(self.name, video_id)

    def is_done(self, video: VideoRef) -> bool:
        """True when every output exists, the marker's fingerprint is current and every output
        still has the size the marker recorded (and its checksum, with ``run.verify_checksums``).

        A damaged output (or marker) is reported by :meth:`damaged`, and the video is done again.
        """
        marker_path = self.marker_path(video.video_id)
        try:
            marker = Marker.read(marker_path)
            if marker.fingerprint != self.fingerprint(video):
                return False
            reason = marker.damage(self.work.root, self.outputs(video.video_id), self.config.verify_checksums)
        except FileNotFoundError:  # no marker, or an output gone (never complete, or deleted on purpose)
            return False
        except ValueError as exc:
            return self.damaged(video, marker_path, str(exc))
        return True if reason is None else self.damaged(video, marker_path, reason)

    def damaged(self, video: VideoRef, marker: Path, reason: str) -> bool:
        """Report, in one warning naming the file, that ``video`` is recomputed because an
        output is not what ``marker`` recorded; remove ``marker`` and return False.

        Without its marker the video is simply not done: the checks the flow, the task and a
        retry each make later find nothing to report again, and a crash before the rewrite
        leaves it to be recomputed by the next run too.
        """
        logger.warning("%s: recomputing video %s: %s", self.name, video.video_id, reason)
        marker.unlink(missing_ok=True)
        return False

    def mark_done(self, video: VideoRef) -> None:
        """Record completion after every output has been renamed into place, with their stamps."""
        outputs = self.outputs(video.video_id)
        Marker.of(self.fingerprint(video), self.work.root, outputs).write(self.marker_path(video.video_id))

    def run(self, video: VideoRef) -> StageRecord:
        """Skip a video whose outputs are current, else process it and write its marker."""
        if self.is_done(video):
            return StageRecord(video.video_id, self.name, "skipped", worker=worker_name())
        start = time.perf_counter()
        with self.memory_probe() as probe:
            info = self.process(video)
        seconds = time.perf_counter() - start
        self.mark_done(video)
        return StageRecord(
            video.video_id,
            self.name,
            "done",
            seconds=seconds,
            peak_bytes=getattr(probe, "peak_bytes", None),
            worker=worker_name(),
            gpu=os.environ.get("CUDA_VISIBLE_DEVICES"),
            outputs=[str(p) for p in self.outputs(video.video_id)],
            info=info,
        )

    def run_isolated(self, video: VideoRef) -> StageRecord | VideoFailure:
        """:meth:`run`, with a typed video error or an out-of-memory error returned as a
        failure instead of raised.

        One bad video of a task that holds several then fails alone, and one that ran out of
        GPU memory comes back for the packing policy to run again on fewer workers per GPU
        while the task goes on with its other videos. Other exceptions propagate, so the
        task's retry policy sees them.
        """
        try:
            return self.run(video)
        except VideoError as exc:
            return VideoFailure(video.video_id, self.name, str(exc))
        except torch.cuda.OutOfMemoryError as exc:
            self.after_out_of_memory()
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return VideoFailure(video.video_id, self.name, reason, "out_of_memory", worker=worker_name())

    def after_out_of_memory(self) -> None:
        """Give back what a video that ran out of memory left allocated (GPU stages)."""
