"""The run's rate, ETA and GPU-hours (trackset.scheduling.eta), on a made-up clock: fake runs
whose end is known from their own arithmetic, in milliseconds."""

from __future__ import annotations

import random

import pytest

from trackset.scheduling.eta import Estimator, StageEstimate, describe_run, describe_stage, run_metadata
from trackset.scheduling.progress import Spent

Event = tuple[float, str, int, Spent]


def waves_run(
    total: int = 400,
    size: int = 40,
    costs: tuple[tuple[str, float], ...] = (("depth", 3.0), ("hands", 1.0)),
    *,
    head_s: float = 0.0,
    first_wave_slower: float = 1.0,
    gpu_rate=lambda t: 1.0,
) -> tuple[list[Event], float, float]:
    """A run on one GPU in waves: each wave through each GPU stage in turn, a video at a time
    (``costs``: its GPU-seconds), while a CPU stage ("h5") builds the wave before beside them
    (its seconds reported in one go, at the wave's end, as the planner collects a lane).

    ``head_s``: preprocessing before any GPU work; ``first_wave_slower``: the first wave's
    videos cost that much more (profiling one worker per GPU); ``gpu_rate(t)``: GPU-seconds
    the GPU gives per second at ``t`` (1: all of it). Returns the events, the end of the
    GPU work and the end of the run (the last wave's H5 files after it).
    """
    t, events = head_s, []
    counts = {stage: (0, Spent()) for stage, _ in costs}
    h5 = (0, Spent())
    for wave in range(total // size):
        for stage, cost in costs:
            each = cost * (first_wave_slower if wave == 0 else 1.0)
            for _ in range(size):
                t += each / gpu_rate(t)
                done, spent = counts[stage]
                counts[stage] = done + 1, Spent(spent.videos + 1, spent.seconds + each, spent.gpu_seconds + each)
                events.append((t, stage, *counts[stage]))
        if wave:  # the wave before's H5 files, built beside this wave's GPU stages
            h5 = (h5[0] + size, Spent(h5[1].videos + size, h5[1].seconds + 0.5 * size, 0.0))
            events.append((t, "h5", *h5))
    gpu_end, t = t, t + 0.5 * size  # the last wave's H5 files, after the last GPU task
    h5 = (h5[0] + size, Spent(h5[1].videos + size, h5[1].seconds + 0.5 * size, 0.0))
    events.append((t, "h5", *h5))
    return events, gpu_end, t


def estimator(total: int = 400, **options) -> Estimator:
    return Estimator(["depth", "hands", "h5"], total, 0.0, ["depth", "hands"], **options)


def eta_at(share: float, events: list[Event], end: float, clock: Estimator) -> tuple[float | None, float]:
    """Feed ``events`` until ``share`` of the time to ``end`` has passed; the ETA then and the time left."""
    for t, stage, done, spent in events:
        clock.observe(t, stage, done, spent)
        if t >= share * end:
            return clock.estimate(t).eta_s, end - t
    raise AssertionError("the run ended first")


# The run's ETA counts the GPU stages' work: the last wave's H5 files after the last GPU task
# (here 20 s; at scale a minute of days) are not in it. So it is held to the GPU work's end.


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5, 0.8])
def test_through_waves_the_eta_follows_the_work_left_not_a_stage_burst(share):
    # depth's count stands still while hands runs its wave, and the other way round: a
    # stage's own rate swings between everything and nothing; the run's work does not.
    events, end, _ = waves_run()
    eta, left = eta_at(share, events, end, estimator())
    assert eta == pytest.approx(left, rel=0.05)


def test_a_slow_start_weighs_on_the_eta_only_for_a_window():
    # Preprocessing before any GPU task, then a first wave at twice the cost (profiling).
    events, end, _ = waves_run(head_s=200.0, first_wave_slower=2.0)
    recent, left = eta_at(0.5, events, end, estimator())
    assert recent == pytest.approx(left, rel=0.05)
    from_start, _ = eta_at(0.5, events, end, estimator(window_share=1.0))
    assert from_start > 1.15 * left  # the rate from the run's start would be off by over 15 %


def test_after_a_step_change_in_speed_the_eta_follows_within_a_window():
    step = 400.0  # a GPU lost: from then on it gives half its GPU-seconds per second
    events, end, _ = waves_run(total=800, gpu_rate=lambda t: 1.0 if t < step else 0.5)
    eta, left = eta_at(2.05 * step / end, events, end, estimator(total=800))  # the window is past the step
    assert eta == pytest.approx(left, rel=0.05)
    stale, left_then = eta_at(1.1 * step / end, events, end, estimator(total=800))
    assert stale < 0.9 * left_then  # just after the step, the window still holds the faster time


def test_gpu_hours_so_far_and_projected():
    clock = Estimator(["depth", "preprocess"], 10, 0.0, ["depth"])
    clock.observe(50.0, "preprocess", 10, Spent(10, 30.0, 0.0))
    # 4 videos on workers of 2 per GPU, 90 s each: 45 GPU-seconds each.
    clock.observe(100.0, "depth", 4, Spent(4, 180.0, 180.0))
    run = clock.estimate(100.0)
    depth, preprocess = run.stages
    assert depth.gpu_hours == pytest.approx(180 / 3600)
    assert depth.gpu_hours_projected == pytest.approx((180 + 6 * 45) / 3600)
    assert preprocess.gpu_hours == preprocess.gpu_hours_projected == 0.0
    assert run.gpu_hours_projected == pytest.approx(450 / 3600)
    # The window (the last half of 100 s) started with none of depth done: 180 GPU-s in 50 s.
    assert run.eta_s == pytest.approx(6 * 45 / (180 / 50))
    assert run.videos_per_hour == pytest.approx(3600 * (180 / 50) / 45)
    assert depth.videos_per_hour == pytest.approx(3600 * 4 / 50)


def test_while_a_stage_has_no_cost_yet_the_eta_is_a_lower_bound_that_says_so():
    clock = estimator()
    clock.observe(10.0, "depth", 5, Spent(5, 15.0, 15.0))
    run = clock.estimate(10.0)
    # depth's 395 videos left at 3 GPU-seconds each, at the 1.5 GPU-seconds per second of the
    # window (the run's start to now); hands, not started, would come on top.
    assert run.eta_s == pytest.approx(395 * 3 / 1.5) and run.waiting_for == ("hands",)
    assert run.gpu_hours_projected is None
    assert "ETA 13 min + hands (no video yet)" in describe_run(run) and "? projected" in describe_run(run)
    assert "eta_s" not in run_metadata(run) and run_metadata(run)["eta_known_stages_s"] == "790.0"
    # hands finished some videos without processing any (all current): they cost nothing.
    clock.observe(11.0, "hands", 5, Spent())
    run = clock.estimate(11.0)
    assert run.waiting_for == () and "eta_s" in run_metadata(run)


def test_no_eta_before_any_work_was_done():
    clock = estimator()
    clock.observe(10.0, "h5", 0, Spent())
    run = clock.estimate(10.0)
    assert run.eta_s is None and "ETA estimating" in describe_run(run)


def test_when_only_the_last_h5_files_are_left_the_eta_is_their_own():
    clock = estimator(total=10)
    clock.observe(100.0, "depth", 10, Spent(10, 30.0, 30.0))
    clock.observe(100.0, "hands", 10, Spent(10, 10.0, 10.0))
    clock.observe(120.0, "h5", 6, Spent(6, 3.0, 0.0))
    run = clock.estimate(120.0)  # the window (60..120 s) starts at the run's start, the newest snapshot before it
    assert run.eta_s == pytest.approx(4 / (6 / 120))
    assert [stage.eta_s for stage in run.stages] == [0.0, 0.0, run.eta_s]


def test_never_negative_and_done_at_the_end():
    rng = random.Random(7)
    clock = estimator(total=50)
    t, counts = 0.0, dict.fromkeys(("depth", "hands", "h5"), 0)
    while min(counts.values()) < 50:
        t += rng.expovariate(1.0)
        stage = rng.choice([s for s, n in counts.items() if n < 50])
        counts[stage] += rng.randint(0, 3)
        counts[stage] = min(counts[stage], 50)
        cost = 0.0 if stage == "h5" else float(counts[stage])
        clock.observe(t, stage, counts[stage], Spent(counts[stage], cost, cost))
        run = clock.estimate(t + rng.random())
        numbers = [run.eta_s, run.videos_per_hour, run.percent, run.gpu_hours]
        numbers += [x for s in run.stages for x in (s.eta_s, s.videos_per_hour, s.gpu_hours_projected)]
        assert all(x is None or x >= 0 for x in numbers)
        assert run.percent <= 100
    run = clock.estimate(t)
    assert run.eta_s == 0.0 and all(stage.eta_s == 0.0 for stage in run.stages) and run.done == 50
    assert "done" in describe_run(run)


def test_memory_stays_bounded_over_a_long_run():
    # Five days at a publish every 2 s: 215,000 counts, a few dozen snapshots.
    clock = Estimator(["depth"], 216_000, 0.0, ["depth"])
    for i in range(1, 215_001):
        clock.observe(2.0 * i, "depth", i, Spent(i, 2.0 * i, 2.0 * i))
        assert clock.samples <= 64
    run = clock.estimate(2.0 * 215_000)
    assert run.videos_per_hour == pytest.approx(1800, rel=0.02)
    assert run.eta_s == pytest.approx(2.0 * 1_000, rel=0.02)


@pytest.mark.parametrize(("options", "message"), [({"window_share": 0}, "window_share"), ({"max_samples": 2}, "max")])
def test_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Estimator(["depth"], 1, 0.0, **options)


def test_a_stage_line_leaves_out_the_gpu_for_a_cpu_stage():
    line = describe_stage(StageEstimate("preprocess", 3, 24, 120.0, 630.0, 0.0, 0.0))
    assert line == "3 of 24 videos · 120 videos/h · ETA 10 min"
    line = describe_stage(StageEstimate("depth_camera", 3, 24, None, None, 0.25, None))
    assert line == "3 of 24 videos · ? videos/h · ETA estimating · 0.25 GPU-h so far, ? projected"


def test_the_profiling_videos_cost_stands_for_a_stage_only_until_its_sized_rounds_ran():
    # depth profiles 2 videos alone on the GPU (10 GPU-seconds each), then runs 4 on 2 workers
    # per GPU (4 GPU-seconds each): the 4 videos left cost what the sized ones did.
    clock = Estimator(["depth"], 10, 0.0, ["depth"])
    clock.observe(12.0, "depth", 2, Spent(2, 20.0, 20.0, profiled=2, profiled_seconds=20.0, profiled_gpu_seconds=20.0))
    only_profiled = clock.estimate(12.0)  # nothing else to go by yet
    assert only_profiled.stages[0].gpu_hours_projected == pytest.approx((20 + 8 * 10) / 3600)
    clock.observe(20.0, "depth", 6, Spent(6, 36.0, 36.0, profiled=2, profiled_seconds=20.0, profiled_gpu_seconds=20.0))
    run = clock.estimate(20.0)  # the window (10..20 s) starts at the run's start, before the profiling
    assert run.stages[0].gpu_hours_projected == pytest.approx((36 + 4 * 4) / 3600)
    assert run.eta_s == pytest.approx(4 * 4 / (36 / 20))  # the work rate counts every GPU-second held
    assert run.percent == pytest.approx(60.0)


def test_a_window_without_sized_videos_takes_the_runs_sized_cost_not_the_profiling():
    clock = Estimator(["depth", "hands"], 10, 0.0, ["depth", "hands"])
    profiled = {"profiled": 1, "profiled_seconds": 10.0, "profiled_gpu_seconds": 10.0}
    clock.observe(10.0, "depth", 5, Spent(5, 26.0, 26.0, **profiled))  # 4 sized videos at 4 GPU-s
    clock.observe(100.0, "hands", 5, Spent(5, 30.0, 30.0))  # depth idle while hands runs
    run = clock.estimate(100.0)  # the window (50..100 s) holds no depth video
    assert run.stages[0].gpu_hours_projected == pytest.approx((26 + 5 * 4) / 3600)
