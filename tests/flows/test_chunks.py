"""GPU stages in chunks of videos per task (thread runner, fast suite): the same bytes as one
video per task, and a bad or out-of-memory video fails alone inside its chunk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.flows.helpers import SMALL_H, SMALL_W, digests, merge_sections, small_build, vid
from trackset.flows.build_dataset import build_dataset
from trackset.synthetic.corpus import encode_scene, video_seed
from trackset.synthetic.scene import SceneSpec

FRAMES = (12, 12, 30, 12)  # video 00002 is the long one


def overrides(root: Path, **extra) -> dict:
    return merge_sections(small_build(root, points_per_window=24), extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("chunks-corpus") / "videos"
    for index, frames in enumerate(FRAMES):
        spec = SceneSpec.from_seed(video_seed(4, index), frames, 10.0, SMALL_W, SMALL_H)
        encode_scene(spec, videos / f"clip_{index:03d}.mp4")
    return videos


def fresh(corpus: Path, root: Path) -> Path:
    shutil.copytree(corpus, root / "videos")
    return root


def test_chunks_give_the_bytes_of_one_video_per_task(corpus, tmp_path):
    one, chunked = fresh(corpus, tmp_path / "one"), fresh(corpus, tmp_path / "chunked")
    build_dataset(overrides=overrides(one, cluster={"gpu_task_videos": 1}))
    summary = build_dataset(overrides=overrides(chunked, cluster={"gpu_task_videos": 4, "cpu_workers": 1}))
    assert not summary.failures
    assert digests(chunked / "dataset") == digests(one / "dataset")
    depth = summary.records("depth_camera")
    assert sorted(r.video_id for r in depth) == [vid(i) for i in range(len(FRAMES))]
    assert all(r.seconds > 0 and r.worker and r.info["attempts"] == 1 for r in depth)  # per-video records


def test_a_bad_and_an_out_of_memory_video_fail_alone_inside_their_chunk(corpus, tmp_path):
    root = fresh(corpus, tmp_path)
    (root / "videos" / "clip_001.scene.json").write_text("{not a scene")  # the depth backend rejects it
    # 0.5 GiB fake GPUs; 12 MiB per frame: the 12-frame videos fit, the 30-frame one does not.
    settings = overrides(
        root,
        cluster={"gpu_task_videos": 4, "cpu_workers": 1, "fake_gpus": [{"memory_gb": 0.5}]},
        synthetic={"depth_camera": {"per_frame_mb": 20}},
    )
    summary = build_dataset(overrides=settings)
    failures = {f.video_id: f for f in summary.failures}
    assert set(failures) == {vid(1), vid(2)}
    assert failures[vid(1)].kind == "error" and "malformed scene sidecar" in failures[vid(1)].reason
    assert failures[vid(2)].kind == "quarantined" and "OutOfMemoryError" in failures[vid(2)].reason
    assert sorted(p.stem for p in (root / "dataset").glob("*.hdf5")) == [vid(0), vid(3)]


def test_cpu_stages_split_a_small_wave_so_every_worker_gets_work(corpus, tmp_path, monkeypatch):
    """4 videos on 2 CPU workers: shards of one video each, not one shard of 4 (``cpu_task_videos``)
    leaving the other worker idle."""
    import trackset.engine.executor as executor

    shards: dict[str, list[int | None]] = {}
    real = executor.submit_stage_tasks

    def recording(stage, videos, config, retry, shard_size=None, resources=None):
        shards.setdefault(stage, []).append(shard_size)
        return real(stage, videos, config, retry, shard_size, resources)

    monkeypatch.setattr(executor, "submit_stage_tasks", recording)
    root = fresh(corpus, tmp_path)
    summary = build_dataset(overrides=overrides(root, cluster={"cpu_workers": 2, "cpu_task_videos": 4}))
    assert not summary.failures
    assert shards["preprocess"] == [1] and shards["h5_build"] == [1]
