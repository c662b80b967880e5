"""Workers per GPU = clamp(floor(headroom * total / peak), 1, max): floors, never rounds up."""

from __future__ import annotations

import pickle

import pytest

from trackset.config.settings import ClusterSettings
from trackset.errors import TracksetError
from trackset.gpu.sizing import (
    GIB,
    MemoryProfile,
    PeakExceedsGpuError,
    format_gib,
    gib_to_bytes,
    plan_workers_per_gpu,
    worker_share,
)


@pytest.mark.parametrize(
    ("total", "peak", "headroom", "max_per_gpu", "expected"),
    [
        # Expectations worked out by hand from the formula, not with the implementation.
        (80 * GIB, 10 * GIB, 0.9, 16, 7),  # 7.2 floors to 7
        (80 * GIB, 10 * GIB, 0.9, 4, 4),  # capped by max_per_gpu
        (80 * GIB, 10 * GIB, 1.0, 16, 8),  # no headroom: exactly 8
        (80 * GIB, 10 * GIB, 0.5, 16, 4),
        (100, 30, 0.9, 16, 3),  # exactly 3.0 stays 3
        (100, 31, 0.9, 16, 2),  # 2.90 floors to 2, never rounds up to 3
        (90, 7, 0.7, 16, 9),  # exactly 9: binary floats would give 8.999... -> 8
        (90, 1, 0.7, 100, 63),  # exactly 63 (floats: 62.999...)
        (1000, 1000, 0.9, 4, 1),  # peak == total: 0.9 floors to 0, clamped to 1
        (1000, 901, 0.9, 4, 1),  # peak between headroom*total and total: one worker
        (1000, 900, 0.9, 4, 1),  # boundary: exactly 1
        (1000, 899, 0.9, 4, 1),  # 1.001 floors to 1
        (1000, 450, 0.9, 4, 2),  # boundary: exactly 2
        (1000, 451, 0.9, 4, 1),  # 1.996 floors to 1
        (1000, 1, 0.9, 1, 1),  # max 1 always wins
    ],
)
def test_plan_workers_per_gpu_table(total, peak, headroom, max_per_gpu, expected):
    assert plan_workers_per_gpu(total, peak, headroom, max_per_gpu) == expected


def test_defaults_come_from_cluster_settings():
    defaults = ClusterSettings()
    # 100 GiB / 1 GiB with 0.9 headroom would be 90: the default cap decides.
    assert plan_workers_per_gpu(100 * GIB, GIB) == defaults.max_workers_per_gpu
    assert plan_workers_per_gpu(100, 10, max_per_gpu=100) == int(defaults.headroom * 10)


def test_peak_above_total_fails_with_stage_peak_and_total():
    with pytest.raises(PeakExceedsGpuError) as info:
        plan_workers_per_gpu(8 * GIB, 12 * GIB + GIB // 2, stage="depth_camera")
    message = str(info.value)
    assert "depth_camera" in message and "12.50 GiB" in message and "8.00 GiB" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, TracksetError)


def test_peak_error_keeps_its_fields_through_pickling():
    error = PeakExceedsGpuError(3 * GIB, 2 * GIB, "hands")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.peak_bytes, copy.total_bytes, copy.stage, str(copy)) == (3 * GIB, 2 * GIB, "hands", str(error))


def test_peak_error_without_stage_names_only_sizes():
    assert str(PeakExceedsGpuError(2 * GIB, GIB)).startswith("peak GPU memory 2.00 GiB exceeds the 1.00 GiB")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"total_bytes": 0, "peak_bytes": 1}, "total_bytes must be positive"),
        ({"total_bytes": 10, "peak_bytes": 0}, "peak_bytes must be positive"),
        ({"total_bytes": 10, "peak_bytes": -5}, "peak_bytes must be positive"),
        ({"total_bytes": 10, "peak_bytes": 1, "headroom": 0}, "headroom must be in"),
        ({"total_bytes": 10, "peak_bytes": 1, "headroom": 1.1}, "headroom must be in"),
        ({"total_bytes": 10, "peak_bytes": 1, "max_per_gpu": 0}, "max_per_gpu must be at least 1"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_workers_per_gpu(**kwargs)


def test_a_memory_profile_renders_a_table_row():
    profile = MemoryProfile("tracks_3d", 1, total_bytes=24 * GIB, peak_bytes=7 * GIB, workers_per_gpu=3)
    assert profile.to_row() == {"GPU": 1, "total GiB": 24.0, "peak GiB": 7.0, "workers per GPU": 3}


@pytest.mark.parametrize("headroom", [0.9, 0.7, 1.0, 0.55])
@pytest.mark.parametrize("total", [16 * GIB, 40 * GIB, 80 * GIB, 90, 7 * GIB + 3])
@pytest.mark.parametrize("peak", [GIB, 3 * GIB, 10 * GIB, 7, 30, 13 * GIB + 1, 41 * GIB])
def test_the_workers_whose_share_holds_the_peak_are_those_the_formula_allows(total, peak, headroom):
    """One task request (its stage's peak as GPU_SHARE) sizes every GPU by its own memory
    exactly as the formula would: the first k workers, none on a GPU smaller than the peak."""
    expected = plan_workers_per_gpu(total, peak, headroom, max_per_gpu=64) if peak <= total else 0
    shares = [worker_share(total, place, headroom) for place in range(64)]
    assert [share >= peak for share in shares] == [place < expected for place in range(64)]


def test_units():
    assert gib_to_bytes(32.0) == 32 * 1024**3
    assert format_gib(gib_to_bytes(0.125)) == "0.12 GiB"
