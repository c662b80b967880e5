"""The GPU packing policy, every branch, driven round by round with a fake GPU (no Prefect, no Dask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trackset.domain import StageOutcome, StageRecord, VideoFailure, VideoRef
from trackset.gpu.inventory import GpuInfo
from trackset.scheduling.gpu_layout import GpuLayout
from trackset.scheduling.packing import PackingResult, PackingSettings, Round, RoundRequest, pack_rounds

GIB = 1024**3
SETTINGS = PackingSettings(profiling_videos=2, headroom=0.9, max_workers_per_gpu=4)


def gpu(index: int, total_gib: float, used_gib: float = 0.0) -> GpuInfo:
    total, used = int(total_gib * GIB), int(used_gib * GIB)
    return GpuInfo(index, "FakeGPU", total, used, total - used)


def videos(count: int) -> list[VideoRef]:
    return [VideoRef(f"{i:05d}", Path(f"v{i}.mp4"), f"h{i}") for i in range(count)]


@dataclass
class FakeGpuRun:
    """A GPU of ``capacity_gib``: a video of ``size`` GiB runs out of memory when
    ``workers_per_gpu`` copies of it do not fit; ``broken`` videos fail with a plain error."""

    sizes: dict[str, float]
    capacity_gib: float = 16.0
    broken: set[str] = field(default_factory=set)
    measured: bool = True
    calls: list[tuple[list[str], int, bool]] = field(default_factory=list)

    def __call__(self, batch: list[VideoRef], workers_per_gpu: int, *, profiling: bool) -> StageOutcome:
        self.calls.append(([v.video_id for v in batch], workers_per_gpu, profiling))
        outcome = StageOutcome("depth_camera")
        for video in batch:
            size = self.sizes[video.video_id]
            if video.video_id in self.broken:
                outcome.failures.append(VideoFailure(video.video_id, "depth_camera", "BadInputError: corrupt", "error"))
            elif size * workers_per_gpu > self.capacity_gib:
                reason = f"OutOfMemoryError: {size} GiB x {workers_per_gpu}"
                outcome.failures.append(VideoFailure(video.video_id, "depth_camera", reason, "out_of_memory"))
            else:
                peak = int(size * GIB) if self.measured else None
                outcome.records.append(StageRecord(video.video_id, "depth_camera", "done", peak_bytes=peak))
        return outcome


def pack_gpu_stage(
    stage: str,
    given: list[VideoRef],
    run: FakeGpuRun,
    gpus: list[GpuInfo],
    settings,
    requests: list[RoundRequest] | None = None,
    **options,
):
    """Drive the policy to its end, each round it asks for run at once by ``run`` (and kept in ``requests``)."""
    steps = pack_rounds(stage, given, gpus, settings, **options)
    try:
        request = next(steps)
        while True:
            if requests is not None:
                requests.append(request)
            request = steps.send(run(request.videos, request.workers_per_gpu, profiling=request.profiling))
    except StopIteration as done:
        result: PackingResult = done.value
        return result


def every_video_once(result, given: list[VideoRef]) -> None:
    seen = [r.video_id for r in result.outcome.records] + [f.video_id for f in result.outcome.failures]
    assert sorted(seen) == sorted(v.video_id for v in given)


def test_profiles_on_one_worker_per_gpu_then_runs_the_rest_at_the_planned_size():
    given = videos(6)
    run = FakeGpuRun({v.video_id: 3.0 for v in given})
    result = pack_gpu_stage("depth_camera", given, run, [gpu(0, 16), gpu(1, 16)], SETTINGS)
    # floor(0.9 * 16 / 3) = 4
    assert run.calls == [(["00000", "00001"], 1, True), (["00002", "00003", "00004", "00005"], 4, False)]
    assert result.rounds == [Round(1, 2, 0, True), Round(4, 4, 0, False)]
    assert (result.peak_bytes, result.peak_source, result.workers_per_gpu) == (3 * GIB, "profiled", 4)
    assert [p.workers_per_gpu for p in result.profiles] == [4, 4]
    assert [r.info["workers_per_gpu"] for r in result.outcome.records] == [1, 1, 4, 4, 4, 4]
    assert not result.outcome.failures and not result.quarantined
    every_video_once(result, given)


def test_each_gpu_runs_as_many_workers_as_fit_what_it_has():
    given = videos(3)
    run = FakeGpuRun({v.video_id: 4.0 for v in given})
    requests: list[RoundRequest] = []
    result = pack_gpu_stage(
        "depth_camera", given, run, [gpu(0, 16), gpu(1, 16, used_gib=6)], SETTINGS, requests=requests
    )
    assert [p.workers_per_gpu for p in result.profiles] == [3, 2]  # floor(14.4/4), floor(9/4)
    # One request: the first 3 workers of a GPU, each holding 4 GiB: 3 on GPU 0, 2 on the busier GPU 1.
    sized = requests[-1]
    assert (sized.workers_per_gpu, sized.need_bytes, sized.per_gpu) == (3, 4 * GIB, (3, 2))


@dataclass
class MixedGpus:
    """GPUs of several sizes, whose workers are named: a video runs on the GPU ``placement``
    says (else GPU 0) and runs out of memory when that GPU's workers in the round, each
    holding the video's size, exceed the GPU."""

    layout: GpuLayout
    sizes: dict[str, float]
    placement: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[list[str], tuple[int, ...]]] = field(default_factory=list)

    def __call__(self, request: RoundRequest) -> StageOutcome:
        self.calls.append(([v.video_id for v in request.videos], request.per_gpu))
        outcome = StageOutcome("hands")
        for video in request.videos:
            place = self.placement.get(video.video_id, 0)
            if not request.per_gpu[place]:
                place = request.per_gpu.index(max(request.per_gpu))  # no worker there: the largest GPU's
            worker = self.layout.workers[place][0]
            size, capacity = self.sizes[video.video_id], self.layout.gpus[place].total_bytes / GIB
            if size * request.per_gpu[place] > capacity:
                failure = VideoFailure(video.video_id, "hands", "OutOfMemoryError", "out_of_memory", worker=worker)
                outcome.failures.append(failure)
            else:
                record = StageRecord(video.video_id, "hands", "done", peak_bytes=int(size * GIB), worker=worker)
                outcome.records.append(record)
        return outcome


def mixed(*gib: float) -> GpuLayout:
    """GPUs of ``gib`` GiB each, four named workers on each offering their share."""
    gpus = [gpu(index, size) for index, size in enumerate(gib)]
    return GpuLayout.of(gpus, 4, workers=[[f"g{index}-w{k}" for k in range(4)] for index in range(len(gib))])


def drive(steps, run):
    try:
        request = next(steps)
        while True:
            request = steps.send(run(request))
    except StopIteration as done:
        return done.value


def test_a_peak_sizes_gpus_of_different_sizes_each_by_its_own_memory():
    layout = mixed(16, 40)  # 5 GiB a video: floor(14.4 / 5) = 2 on 16 GiB, floor(36 / 5) = 7, at most 4, on 40
    run = MixedGpus(layout, {v.video_id: 5.0 for v in videos(6)}, placement={"00001": 1})
    result = drive(pack_rounds("hands", videos(6), layout, SETTINGS), run)
    assert run.calls == [(["00000", "00001"], (1, 1)), (["00002", "00003", "00004", "00005"], (2, 4))]
    assert [(p.gpu_index, p.workers_per_gpu) for p in result.profiles] == [(0, 2), (1, 4)]
    assert {r.video_id: r.info["workers_per_gpu"] for r in result.outcome.records if r.video_id > "00001"} == {
        "00002": 2,
        "00003": 2,
        "00004": 2,
        "00005": 2,
    }


def test_out_of_memory_on_one_kind_of_gpu_shrinks_that_kind_only():
    layout = mixed(16, 40)
    sizes = {v.video_id: 5.0 for v in videos(4)} | {"00003": 9.0}  # 2 x 9 > 16 on the small GPU
    run = MixedGpus(layout, sizes, placement={"00003": 0})
    result = drive(pack_rounds("hands", videos(4), layout, SETTINGS), run)
    # It ran out where each worker held 7.2 GiB; the 40 GiB GPU's four hold 9 GiB and more each: they stay.
    assert run.calls[1:] == [(["00002", "00003"], (2, 4)), (["00003"], (1, 4))]
    assert [(r.per_gpu, r.out_of_memory) for r in result.rounds[1:]] == [((2, 4), 1), ((1, 4), 0)]
    assert not result.outcome.failures and not result.quarantined
    every_video_once(result, videos(4))


def test_a_gpu_smaller_than_the_peak_takes_none_and_a_video_too_big_for_one_moves_to_a_larger():
    layout = mixed(8, 32)
    sizes = {"00000": 10.0, "00001": 10.0, "00002": 10.0, "00003": 20.0}
    run = MixedGpus(layout, sizes, placement={"00003": 1})
    result = drive(pack_rounds("hands", videos(4), layout, SETTINGS, known_peak_bytes=10 * GIB), run)
    assert [p.workers_per_gpu for p in result.profiles] == [0, 2]  # 10 GiB does not fit 8; floor(28.8 / 10)
    # 20 GiB ran out beside another worker on the 32 GiB GPU, and runs there alone.
    assert run.calls == [(["00000", "00001", "00002", "00003"], (0, 2)), (["00003"], (0, 1))]
    assert not result.outcome.failures
    every_video_once(result, videos(4))


def test_out_of_memory_videos_rerun_one_worker_fewer_until_they_fit():
    sizes = {"00000": 2.0, "00001": 2.0, "00002": 2.0, "00003": 7.0, "00004": 5.0}
    run = FakeGpuRun(sizes)
    result = pack_gpu_stage("depth_camera", videos(5), run, [gpu(0, 16)], SETTINGS)
    # Profiled peak 2 GiB -> 4 workers; 7 GiB fits 2 at a time, 5 GiB fits 3.
    assert [(ids, w) for ids, w, _ in run.calls] == [
        (["00000", "00001"], 1),
        (["00002", "00003", "00004"], 4),
        (["00003", "00004"], 3),
        (["00003"], 2),
    ]
    assert {r.video_id: r.info["workers_per_gpu"] for r in result.outcome.records} == {
        "00000": 1,
        "00001": 1,
        "00002": 4,
        "00004": 3,
        "00003": 2,
    }
    assert not result.outcome.failures
    every_video_once(result, videos(5))


def test_a_video_out_of_memory_alone_on_a_gpu_is_quarantined_with_its_reason():
    sizes = {"00000": 1.0, "00001": 1.0, "00002": 20.0, "00003": 1.0}
    result = pack_gpu_stage("depth_camera", videos(4), FakeGpuRun(sizes), [gpu(0, 16)], SETTINGS)
    [quarantined] = result.quarantined
    assert quarantined.video_id == "00002" and quarantined.kind == "quarantined"
    assert quarantined.reason.startswith("out of memory alone on a GPU: OutOfMemoryError: 20.0 GiB x 1")
    assert result.outcome.failures == [quarantined]
    assert [r.workers_per_gpu for r in result.rounds] == [1, 4, 3, 2, 1]
    every_video_once(result, videos(4))


def test_a_video_out_of_memory_while_profiling_is_quarantined_at_once():
    sizes = {"00000": 30.0, "00001": 2.0, "00002": 2.0}
    run = FakeGpuRun(sizes)
    result = pack_gpu_stage("depth_camera", videos(3), run, [gpu(0, 16)], SETTINGS)
    assert [q.video_id for q in result.quarantined] == ["00000"]
    assert result.quarantined[0].reason.startswith("out of memory alone on a GPU while profiling: ")
    assert run.calls[1] == (["00002"], 4, False)  # sized from the video that did fit
    every_video_once(result, videos(3))


def test_a_peak_above_a_whole_gpu_fails_the_rest_at_once_and_keeps_what_ran():
    sizes = {v.video_id: 12.0 for v in videos(4)}
    run = FakeGpuRun(sizes, capacity_gib=16)
    result = pack_gpu_stage("depth_camera", videos(4), run, [gpu(0, 16, used_gib=6)], SETTINGS)
    assert result.error is not None and "exceeds the 10.00 GiB available" in result.error
    assert len(run.calls) == 1  # no video after profiling was submitted
    assert [r.video_id for r in result.outcome.records] == ["00000", "00001"]
    assert [(f.video_id, f.reason) for f in result.outcome.failures] == [
        ("00002", result.error),
        ("00003", result.error),
    ]
    every_video_once(result, videos(4))


def test_without_a_measured_peak_the_prior_sizes_the_cluster():
    run = FakeGpuRun({v.video_id: 1.0 for v in videos(4)}, measured=False)
    result = pack_gpu_stage("depth_camera", videos(4), run, [gpu(0, 32)], SETTINGS, prior_peak_bytes=14 * GIB)
    assert (result.peak_source, result.peak_bytes) == ("prior", 14 * GIB)
    assert run.calls[-1][1] == 2  # floor(0.9 * 32 / 14)


def test_without_a_peak_or_a_prior_one_worker_per_gpu_runs():
    run = FakeGpuRun({v.video_id: 1.0 for v in videos(4)}, measured=False)
    result = pack_gpu_stage("depth_camera", videos(4), run, [gpu(0, 32)], SETTINGS)
    assert result.peak_source == "none" and not result.profiles
    assert run.calls[-1] == (["00002", "00003"], 1, False)


def test_a_known_peak_skips_profiling():
    run = FakeGpuRun({v.video_id: 3.0 for v in videos(3)})
    result = pack_gpu_stage("depth_camera", videos(3), run, [gpu(0, 16)], SETTINGS, known_peak_bytes=5 * GIB)
    assert run.calls == [(["00000", "00001", "00002"], 2, False)]  # floor(14.4 / 5)
    assert result.peak_source == "given"


def test_a_stage_already_profiled_without_a_peak_is_not_profiled_again():
    """A later wave of a stage whose profile measured nothing: the prior, else one worker per GPU."""
    run = FakeGpuRun({v.video_id: 1.0 for v in videos(3)}, measured=False)
    result = pack_gpu_stage("depth_camera", videos(3), run, [gpu(0, 32)], SETTINGS, profile=False)
    assert run.calls == [(["00000", "00001", "00002"], 1, False)]
    assert result.peak_source == "none"
    run = FakeGpuRun({v.video_id: 1.0 for v in videos(3)}, measured=False)
    result = pack_gpu_stage(
        "depth_camera", videos(3), run, [gpu(0, 32)], SETTINGS, prior_peak_bytes=14 * GIB, profile=False
    )
    assert run.calls == [(["00000", "00001", "00002"], 2, False)]
    assert result.peak_source == "prior"


def test_fewer_videos_than_profiling_runs_only_the_profile():
    run = FakeGpuRun({"00000": 1.0})
    result = pack_gpu_stage("depth_camera", videos(1), run, [gpu(0, 16)], SETTINGS)
    assert run.calls == [(["00000"], 1, True)]
    assert result.workers_per_gpu == 1 and result.profiles


def test_plain_failures_pass_through_and_are_not_rerun():
    sizes = {v.video_id: 2.0 for v in videos(4)}
    run = FakeGpuRun(sizes, broken={"00001", "00003"})
    result = pack_gpu_stage("depth_camera", videos(4), run, [gpu(0, 16)], SETTINGS)
    assert len(run.calls) == 2
    assert sorted((f.video_id, f.kind) for f in result.outcome.failures) == [("00001", "error"), ("00003", "error")]
    every_video_once(result, videos(4))


def test_a_cluster_that_cannot_be_resized_runs_once_and_quarantines_out_of_memory():
    sizes = {"00000": 2.0, "00001": 40.0, "00002": 2.0}
    run = FakeGpuRun(sizes)
    result = pack_gpu_stage("depth_camera", videos(3), run, [], SETTINGS, resizable=False)
    assert run.calls == [(["00000", "00001", "00002"], 1, False)]
    assert [q.video_id for q in result.quarantined] == ["00001"]
    assert result.quarantined[0].reason.startswith("out of memory on a cluster trackset cannot resize: ")
    assert all("workers_per_gpu" not in r.info for r in result.outcome.records)
    every_video_once(result, videos(3))


@pytest.mark.parametrize("count", [0, 2, 7])
def test_nothing_is_lost_whatever_the_mix(count):
    sizes = {v.video_id: [1.0, 9.0, 30.0][i % 3] for i, v in enumerate(videos(count))}
    result = pack_gpu_stage("depth_camera", videos(count), FakeGpuRun(sizes, broken={"00004"}), [gpu(0, 16)], SETTINGS)
    every_video_once(result, videos(count))
