"""A stored memory profile is reused only for the same stage config, on whichever GPUs."""

from __future__ import annotations

from trackset.scheduling.profile_store import ProfileStore

GIB = 1024**3


def test_a_profile_is_reused_while_its_stage_config_holds(tmp_path):
    store = ProfileStore(tmp_path)
    store.save("depth_camera", "config-a", 14 * GIB)
    # The peak is the stage's: a run on other GPUs (a SLURM job's 80 GB card) starts from it too.
    assert store.load("depth_camera", "config-a").peak_bytes == 14 * GIB
    assert store.load("depth_camera", "config-b") is None  # another model or cost
    assert store.load("hands", "config-a") is None


def test_forgotten_or_unreadable_profiles_are_not_used(tmp_path):
    store = ProfileStore(tmp_path)
    store.save("hands", "config", 6 * GIB)
    store.forget("hands")
    assert store.load("hands", "config") is None
    store.path("hands").write_text("{not json")
    assert store.load("hands", "config") is None
