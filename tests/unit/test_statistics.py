"""Statistics are exact (to 1e-12 against numpy over all values), mergeable and deterministic."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pytest
import yaml

from trackset.formats.statistics import (
    STATISTIC_DIMS,
    STATISTIC_KEYS,
    STATS_YAML_KEYS,
    STD_FLOORED_KEY,
    Moments,
    VideoPartials,
    aggregate,
    normalization_stats,
    per_video_moments,
    write_stats_yaml,
)

# Written out from FORMATS.md ("normalization_stats.yaml"), not taken from the implementation.
YAML_KEYS = [
    "imagenet_mean",
    "imagenet_std",
    "track_type",
    "track_dim",
    "displacement_mean",
    "displacement_std",
    "displacement_num_samples",
    "depth_mean",
    "depth_std",
    "depth_num_samples",
    "pose_mean",
    "pose_std",
    "pose_num_samples",
    "hand_uvd_disp_mean",
    "hand_uvd_disp_std",
    "hand_rot_disp_mean",
    "hand_rot_disp_std",
    "hand_pose_num_samples",
    "std_floored",
]
DIMS = {"displacement": 3, "depth": 1, "pose": 9, "hand_uvd": 3, "hand_rot": 6}


def _chunks(data: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(data)
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _partials(video_id: str, rng: np.random.Generator, rows: int = 50, hand_rows: int = 20) -> VideoPartials:
    def of(n: int, d: int) -> Moments:
        return Moments.of(rng.normal(1.0, 0.3, size=(n, d)).astype(np.float32))

    return VideoPartials(
        video_id=video_id,
        fingerprint=f"fp-{video_id}",
        displacement=of(rows, 3),
        depth=of(rows * 7, 1),
        pose=of(rows // 5, 9),
        hand_uvd=of(hand_rows, 3),
        hand_rot=of(hand_rows, 6),
    )


def _merged(**moments: Moments) -> dict[str, Moments]:
    merged = {name: Moments.empty(dim) for name, dim in DIMS.items()}
    merged.update(moments)
    return merged


@pytest.mark.parametrize(
    ("dim", "sizes"),
    [
        (3, [0, 1, 500, 0, 37, 1, 2000]),
        (1, [1, 1, 1, 1, 4096]),
        (9, [3000]),
        (6, [0, 0, 2, 999, 1, 0]),
        (3, [1] * 40 + [0] * 3),
    ],
)
@pytest.mark.parametrize("order", ["forward", "reversed", "shuffled", "tree"])
def test_merged_moments_match_numpy_over_all_values(dim, sizes, order):
    rng = np.random.default_rng(sum(sizes) + dim)
    data = rng.normal(loc=2.5, scale=0.7, size=(sum(sizes), dim)).astype(np.float32)
    parts = [Moments.of(chunk) for chunk in _chunks(data, sizes)]
    if order == "reversed":
        parts = parts[::-1]
    elif order == "shuffled":
        parts = [parts[i] for i in rng.permutation(len(parts))]
    if order == "tree":
        while len(parts) > 1:
            parts = [Moments.merge_all(parts[i : i + 2]) for i in range(0, len(parts), 2)]
        merged = parts[0]
    else:
        merged = Moments.merge_all(parts)
    expected = data.astype(np.float64)
    assert merged.count == len(expected)
    np.testing.assert_allclose(merged.mean, expected.mean(axis=0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(merged.std, expected.std(axis=0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(merged.variance, expected.var(axis=0), rtol=1e-12, atol=0)


def test_of_treats_a_vector_as_one_component_and_empty_as_empty():
    assert Moments.of(np.array([1.0, 2.0, 3.0])) == Moments.of(np.array([[1.0], [2.0], [3.0]]))
    assert Moments.of(np.zeros((0, 4), np.float32)) == Moments.empty(4)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.zeros((2, 2, 2)), "shape"),
        (np.zeros((3, 0)), "shape"),
        (np.array([1.0, np.nan]), "finite"),
        (np.array([[1.0, np.inf]]), "finite"),
    ],
)
def test_of_rejects_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        Moments.of(values)


def test_merge_with_an_empty_side_is_bitwise_identity():
    moments = Moments.of(np.random.default_rng(0).normal(size=(10, 3)))
    assert moments.merge(Moments.empty(3)) is moments
    assert Moments.merge(Moments.empty(3), moments) is moments
    assert Moments.merge_all([Moments.empty(3), Moments.empty(3)]) == Moments.empty(3)


def test_merge_refuses_other_dimensions_and_empty_folds():
    with pytest.raises(ValueError, match="dimension 3 and 1"):
        Moments.empty(3).merge(Moments.empty(1))
    with pytest.raises(ValueError, match="at least one"):
        Moments.merge_all([])


def test_variance_of_no_samples_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="undefined"):
        _ = Moments.empty(2).std


def test_moments_are_read_only():
    moments = Moments.of(np.ones((2, 2)))
    with pytest.raises(ValueError, match="read-only"):
        moments.mean[0] = 5.0


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2],
        {"count": 1, "mean": [1.0]},
        {"count": -1, "mean": [0.0], "m2": [0.0]},
        {"count": True, "mean": [0.0], "m2": [0.0]},
        {"count": 1, "mean": ["a"], "m2": [0.0]},
        {"count": 1, "mean": [0.0], "m2": [-1.0]},
        {"count": 1, "mean": [0.0, 1.0], "m2": [0.0]},
        {"count": 0, "mean": [1.0], "m2": [0.0]},
    ],
)
def test_from_json_rejects_malformed_moments(obj):
    with pytest.raises(ValueError):
        Moments.from_json(obj)


def test_json_round_trip_is_bitwise_exact():
    rng = np.random.default_rng(7)
    moments = Moments.of(rng.normal(size=(1001, 6)) * 10.0 ** rng.integers(-30, 30, size=6))
    back = Moments.from_json(json.loads(json.dumps(moments.to_json())))
    assert back == moments
    assert back.mean.tobytes() == moments.mean.tobytes()
    assert back.m2.tobytes() == moments.m2.tobytes()

    partials = _partials("00003", rng)
    text = partials.to_json_text()
    assert VideoPartials.from_json_text(text) == partials
    assert VideoPartials.from_json_text(text).to_json_text() == text


def test_partials_write_and_read(tmp_path):
    partials = _partials("00001", np.random.default_rng(1))
    path = tmp_path / "partials" / "00001.json"
    partials.write(path)
    assert VideoPartials.read(path) == partials
    assert [p.name for p in path.parent.iterdir()] == ["00001.json"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda obj: "not json",
        lambda obj: json.dumps({**obj, "extra": 1}),
        lambda obj: json.dumps({**obj, "video_id": "../x"}),
        lambda obj: json.dumps({**obj, "moments": {**obj["moments"], "pose": obj["moments"]["depth"]}}),
        lambda obj: json.dumps({k: v for k, v in obj.items() if k != "fingerprint"}),
        lambda obj: json.dumps({**obj, "moments": {**obj["moments"], "hand_rot": Moments.empty(6).to_json()}}),
        lambda obj: json.dumps(obj).replace('"m2": [', '"m2": [NaN, ', 1),
    ],
    ids=["not-json", "extra-key", "bad-id", "wrong-dim", "no-fingerprint", "hand-counts", "nan"],
)
def test_read_names_the_file_on_malformed_partials(tmp_path, mutate):
    obj = json.loads(_partials("00002", np.random.default_rng(2)).to_json_text())
    path = tmp_path / "00002.json"
    path.write_text(mutate(obj))
    with pytest.raises(ValueError, match="00002.json: malformed statistics partials"):
        VideoPartials.read(path)


def test_aggregate_is_byte_deterministic_whatever_the_input_order():
    rng = np.random.default_rng(3)
    partials = [
        _partials(f"{i:05d}", rng, rows=int(rng.integers(0, 80)), hand_rows=int(rng.integers(0, 30))) for i in range(12)
    ]

    def dumped(items: list[VideoPartials]) -> str:
        return json.dumps({name: m.to_json() for name, m in aggregate(items).items()}, sort_keys=True)

    reference = dumped(partials)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(partials))
        assert dumped([partials[i] for i in order]) == reference
    merged = aggregate(partials)
    for name, dim in DIMS.items():
        direct = Moments.merge_all([Moments.empty(dim), *(getattr(p, name) for p in partials)])
        assert merged[name] == direct


def test_aggregate_refuses_a_video_twice():
    partials = _partials("00004", np.random.default_rng(4))
    with pytest.raises(ValueError, match="00004 given twice"):
        aggregate([partials, partials])


def test_aggregate_of_nothing_is_empty():
    assert aggregate([]) == {name: Moments.empty(dim) for name, dim in DIMS.items()}


def test_stats_have_every_key_in_order_with_plain_types():
    rng = np.random.default_rng(5)
    merged = aggregate([_partials(f"{i:05d}", rng) for i in range(3)])
    stats = normalization_stats(merged, std_floor=1e-6)
    assert list(stats) == YAML_KEYS
    assert stats["imagenet_mean"] == [0.485, 0.456, 0.406]
    assert stats["imagenet_std"] == [0.229, 0.224, 0.225]
    assert (stats["track_type"], stats["track_dim"]) == ("3d", 3)
    assert stats["displacement_num_samples"] == 150
    assert stats["depth_num_samples"] == 1050
    assert stats["pose_num_samples"] == 30
    assert stats["hand_pose_num_samples"] == 60
    assert type(stats["depth_mean"]) is float and type(stats["depth_std"]) is float
    for key, length in [
        ("displacement", 3),
        ("pose", 9),
        ("hand_uvd_disp", 3),
        ("hand_rot_disp", 6),
    ]:
        for suffix in ("mean", "std"):
            value = stats[f"{key}_{suffix}"]
            assert len(value) == length and all(type(x) is float for x in value)
    assert stats["depth_std"] == float(merged["depth"].std[0])
    assert stats["std_floored"] == []


def test_the_public_key_tables_are_formats_md():
    """validate, the CLI and the flow tests read the keys from these tables."""
    assert (*STATS_YAML_KEYS, STD_FLOORED_KEY) == tuple(YAML_KEYS)
    assert [row.statistic for row in STATISTIC_KEYS] == list(STATISTIC_DIMS) == list(DIMS)
    for row in STATISTIC_KEYS:
        assert {f"{row.prefix}_mean", f"{row.prefix}_std", row.count_key} <= set(STATS_YAML_KEYS)


def test_per_video_moments_follow_the_formats_rules():
    """Every displacement row (step 0 too), valid pixels plus query depths > 0, every pose and
    hand row, each against numpy over the values written out here."""
    rng = np.random.default_rng(8)
    queries = [rng.uniform(0.1, 2.5, (n, 3)).astype(np.float32) for n in (4, 0, 6)]
    queries[0][1, 2] = 0.0  # a query depth of 0 is no sample
    displacements = [rng.normal(size=(5, q.shape[0], 3)).astype(np.float32) for q in queries]
    poses = rng.normal(size=(3, 5, 9)).astype(np.float32)
    uvd = [rng.normal(size=(2, 5, 3)).astype(np.float32), rng.normal(size=(1, 5, 3)).astype(np.float32)]
    rot = [rng.normal(size=(2, 5, 6)).astype(np.float32), rng.normal(size=(1, 5, 6)).astype(np.float32)]
    pixels = rng.uniform(0.1, 2.5, 50)
    moments = per_video_moments(Moments.of(pixels), queries, displacements, poses, uvd, rot)
    query_depths = np.concatenate([q[:, 2] for q in queries]).astype(np.float64)
    expected = {
        "displacement": np.concatenate([d.reshape(-1, 3) for d in displacements]),
        "depth": np.concatenate([pixels, query_depths[query_depths > 0]])[:, None],
        "pose": poses.reshape(-1, 9),
        "hand_uvd": np.concatenate([u.reshape(-1, 3) for u in uvd]),
        "hand_rot": np.concatenate([r.reshape(-1, 6) for r in rot]),
    }
    assert list(moments) == list(STATISTIC_DIMS)
    for name, values in expected.items():
        values = values.astype(np.float64)
        assert moments[name].count == len(values), name
        np.testing.assert_allclose(moments[name].mean, values.mean(axis=0), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(moments[name].variance, values.var(axis=0), rtol=1e-12, atol=1e-15)
    assert moments["depth"].count == 50 + 9
    empty = per_video_moments(Moments.empty(1), [], [], np.zeros((0, 5, 9), np.float32), [], [])
    assert empty == {name: Moments.empty(dim) for name, dim in STATISTIC_DIMS.items()}


@pytest.mark.parametrize(
    ("empty", "keys", "count_key"),
    [
        ("depth", ["depth_mean", "depth_std"], "depth_num_samples"),
        ("pose", ["pose_mean", "pose_std"], "pose_num_samples"),
        ("displacement", ["displacement_mean", "displacement_std"], "displacement_num_samples"),
        (
            "hand",
            ["hand_uvd_disp_mean", "hand_uvd_disp_std", "hand_rot_disp_mean", "hand_rot_disp_std"],
            "hand_pose_num_samples",
        ),
    ],
)
def test_a_statistic_without_samples_leaves_its_mean_and_std_out_with_a_warning(caplog, empty, keys, count_key):
    """Never null: y2r's reader would make it np.array(None); a missing hand key is what the
    scripts write and what the reader checks (``has_hand_stats``)."""
    rng = np.random.default_rng(6)
    merged = {name: Moments.of(rng.normal(size=(5, dim))) for name, dim in DIMS.items()}
    for name in ("hand_uvd", "hand_rot") if empty == "hand" else (empty,):
        merged[name] = Moments.empty(DIMS[name])
    with caplog.at_level(logging.WARNING, logger="trackset.formats.statistics"):
        stats = normalization_stats(merged, std_floor=1e-6)
    assert [key for key in keys if key in stats] == []
    assert stats[count_key] == 0
    assert list(stats) == [k for k in YAML_KEYS if k not in keys]  # order kept
    assert None not in stats.values()
    assert any("no samples" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_zero_variance_components_are_floored_and_listed(caplog):
    rng = np.random.default_rng(8)
    displacement = rng.normal(size=(100, 3)).astype(np.float32)
    displacement[:, 2] = 0.1
    hand_rot = rng.normal(size=(40, 6))
    hand_rot[:, 0] = 0.0
    merged = _merged(
        displacement=Moments.of(displacement[:37]).merge(Moments.of(displacement[37:])),
        depth=Moments.of(np.full(10, 1.5)),
        pose=Moments.of(rng.normal(size=(4, 9))),
        hand_uvd=Moments.of(rng.normal(size=(40, 3))),
        hand_rot=Moments.of(hand_rot),
    )
    with caplog.at_level(logging.WARNING, logger="trackset.formats.statistics"):
        stats = normalization_stats(merged, std_floor=1e-6)
    assert stats["std_floored"] == ["displacement_std[2]", "depth_std", "hand_rot_disp_std[0]"]
    assert stats["displacement_std"][2] == 1e-6
    assert stats["depth_std"] == 1e-6
    assert stats["hand_rot_disp_std"][0] == 1e-6
    assert stats["displacement_std"][:2] == merged["displacement"].std[:2].tolist()
    assert any("displacement_std[2], depth_std, hand_rot_disp_std[0]" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("merged", "kwargs", "match"),
    [
        (_merged(hand_uvd=Moments.of(np.ones((2, 3)))), {}, "hand_uvd has 2 samples but hand_rot has 0"),
        ({"depth": Moments.empty(1)}, {}, "expected statistics"),
        (_merged(pose=Moments.empty(3)), {}, "pose must have dimension 9"),
        (_merged(), {"track_type": "4d"}, "unsupported track_type"),
        (_merged(), {"std_floor": 0.0}, "std_floor"),
        (_merged(), {"std_floor": float("nan")}, "std_floor"),
    ],
)
def test_normalization_stats_rejects_inconsistent_input(merged, kwargs, match):
    with pytest.raises(ValueError, match=match):
        normalization_stats(merged, **{"std_floor": 1e-6, **kwargs})


def test_yaml_has_every_key_in_order_and_identical_bytes(tmp_path):
    rng = np.random.default_rng(9)
    partials = [_partials(f"{i:05d}", rng) for i in range(4)]
    first, second = tmp_path / "a" / "normalization_stats.yaml", tmp_path / "b" / "normalization_stats.yaml"
    stats = normalization_stats(aggregate(partials), std_floor=1e-6)
    write_stats_yaml(first, stats)
    write_stats_yaml(second, normalization_stats(aggregate(partials[::-1]), std_floor=1e-6))
    assert first.read_bytes() == second.read_bytes()
    loaded = yaml.safe_load(first.read_text())
    assert list(loaded) == YAML_KEYS
    assert loaded == stats  # every float comes back bit for bit


@pytest.mark.parametrize("value", [1e-300, 5e-324, 1 / 3, 0.1 + 0.2, 1e16, 123456789.123456789, -2.5e-7, 1e-6])
def test_yaml_floats_round_trip_exactly(tmp_path, value):
    path = tmp_path / "stats.yaml"
    write_stats_yaml(path, {"x": value, "xs": [value, -value]})
    loaded = yaml.safe_load(path.read_text())
    assert loaded["x"] == value and loaded["xs"] == [value, -value]
    assert type(loaded["x"]) is float


def test_yaml_converts_numpy_values_and_writes_null(tmp_path):
    path = tmp_path / "stats.yaml"
    write_stats_yaml(path, {"a": np.float32(0.5), "b": np.arange(3), "c": None, "d": [np.float64(1 / 3)]})
    assert path.read_text() == "a: 0.5\nb: [0, 1, 2]\nc: null\nd: [0.3333333333333333]\n"


def test_moments_of_counts_equal_moments_of_the_expanded_samples():
    rng = np.random.default_rng(5)
    values = rng.normal(1.5, 0.4, 300).astype(np.float32)
    counts = rng.integers(0, 5000, 300)
    expanded = np.repeat(values.astype(np.float64), counts)
    moments = Moments.of_counts(values, counts)
    assert moments.count == expanded.size
    np.testing.assert_allclose(moments.mean, [expanded.mean()], rtol=1e-12, atol=0)
    np.testing.assert_allclose(moments.variance, [expanded.var()], rtol=1e-12, atol=0)
    assert Moments.of_counts(values, np.zeros(300, np.int64)) == Moments.empty(1)


@pytest.mark.parametrize(
    ("values", "counts", "message"),
    [
        ([1.0, 2.0], [1, -1], "non-negative"),
        ([1.0, np.inf], [1, 1], "finite"),
        ([1.0, 2.0], [1.0, 1.0], "integer counts"),
        ([1.0, 2.0], [1], "one shape"),
    ],
)
def test_moments_of_counts_rejects_bad_histograms(values, counts, message):
    with pytest.raises(ValueError, match=message):
        Moments.of_counts(np.array(values), np.array(counts))
