"""A stored memory profile is reused only for the same stage config and the same GPUs."""

from __future__ import annotations

from trackset.gpu.inventory import GpuInfo
from trackset.scheduling.profile_store import ProfileStore

GIB = 1024**3
GPUS = [GpuInfo(0, "FakeGPU", 32 * GIB, 0, 32 * GIB), GpuInfo(1, "FakeGPU", 32 * GIB, 0, 32 * GIB)]


def test_a_profile_is_reused_while_its_inputs_hold(tmp_path):
    store = ProfileStore(tmp_path)
    store.save("depth_camera", "config-a", GPUS, 14 * GIB)
    busy = [GpuInfo(0, "FakeGPU", 32 * GIB, 20 * GIB, 12 * GIB), GPUS[1]]  # other processes: same GPUs
    assert store.load("depth_camera", "config-a", busy).peak_bytes == 14 * GIB
    assert store.load("depth_camera", "config-b", GPUS) is None  # another model or cost
    assert store.load("depth_camera", "config-a", GPUS[:1]) is None  # other GPUs
    assert store.load("depth_camera", "config-a", [GpuInfo(0, "FakeGPU", 16 * GIB, 0, 16 * GIB), GPUS[1]]) is None
    assert store.load("hands", "config-a", GPUS) is None


def test_forgotten_or_unreadable_profiles_are_not_used(tmp_path):
    store = ProfileStore(tmp_path)
    store.save("hands", "config", GPUS, 6 * GIB)
    store.forget("hands")
    assert store.load("hands", "config", GPUS) is None
    store.path("hands").write_text("{not json")
    assert store.load("hands", "config", GPUS) is None
