"""The adapters' calls checked against the real model packages, where they install on CPU.

Each test imports the real package and is skipped, with the reason, where it is absent:
``smplx`` (in the test extra, 0.3 MB), ``ultralytics`` and ``sam3`` (both pull a
CUDA torch and torchvision, several GB), co-tracker (not on the package index: a checkout).
The fakes in ``tests/unit/fakes`` stand for these calls everywhere else.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.unit.fakes import wilor_api
from trackset.adapters import mano


def test_smplx_builds_mano_from_the_file_trackset_writes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """smplx 0.1.28's ``MANOLayer`` (what WiLoR's ``MANO`` extends) cannot read the MANO file as
    downloaded without chumpy, and reads trackset's numpy-only copy, running a forward pass."""
    smplx = pytest.importorskip("smplx", reason="smplx is not installed (in the test extra)")
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "chumpy", None)  # as on Python 3.11
    source = wilor_api.write_chumpy_pickle(tmp_path / "download" / "MANO_RIGHT.pkl", wilor_api.mano_fields())
    kwargs = {"use_pca": False, "flat_hand_mean": True, "num_hand_joints": 15, "create_body_pose": False}
    with pytest.raises(ImportError, match="chumpy"):
        smplx.MANOLayer(model_path=str(source.parent), **kwargs)
    target = mano.write_numpy_mano(source, tmp_path / "numpy" / "MANO_RIGHT.pkl")
    layer = smplx.MANOLayer(model_path=str(target.parent), **kwargs)
    np.testing.assert_allclose(
        layer.shapedirs.numpy(), wilor_api.mano_fields()["shapedirs"].x[:, :, :10].astype(np.float32)
    )
    out = layer(
        global_orient=torch.eye(3)[None, None],
        hand_pose=torch.eye(3).expand(1, 15, 3, 3),
        betas=torch.zeros(1, 10),
        pose2rot=False,
    )
    assert tuple(out.vertices.shape) == (1, 778, 3) and torch.isfinite(out.vertices).all()


def test_ultralytics_yolo_takes_what_the_wilor_adapter_passes() -> None:
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics is not installed (WiLoR's requirements)")
    from ultralytics.engine.results import Boxes

    assert "model" in inspect.signature(ultralytics.YOLO.__init__).parameters  # YOLO(path)
    call = inspect.signature(ultralytics.YOLO.__call__).parameters
    assert "source" in call and any(p.kind is p.VAR_KEYWORD for p in call.values())  # conf=, verbose=
    for name in ("xyxy", "conf", "cls"):  # result.boxes.<name>
        assert isinstance(getattr(Boxes, name), property)


def test_sam3_video_predictor_takes_the_requests_the_adapter_sends() -> None:
    pytest.importorskip("sam3", reason="sam3 is not installed (pip install sam3; it needs torchvision)")
    builder = pytest.importorskip("sam3.model_builder")
    from sam3.model import io_utils
    from sam3.model.sam3_video_predictor import Sam3VideoPredictor

    assert "gpus_to_use" in inspect.signature(builder.build_sam3_video_predictor).parameters
    assert "checkpoint_path" in inspect.signature(Sam3VideoPredictor.__init__).parameters
    assert ".png" in io_utils.IMAGE_EXTS  # the adapter's frame folder
    handle = inspect.getsource(Sam3VideoPredictor.handle_request)
    for key in ('"start_session"', '"resource_path"', '"add_prompt"', '"frame_index"', '"text"', '"reset_session"'):
        assert key in handle, key
    assert '"propagation_direction"' in inspect.getsource(Sam3VideoPredictor.handle_stream_request)


def test_cotracker_predictor_takes_what_the_adapter_passes() -> None:
    predictor = pytest.importorskip("cotracker.predictor", reason="co-tracker is not installed (a checkout)")
    init = inspect.signature(predictor.CoTrackerPredictor.__init__).parameters
    assert {"checkpoint", "offline", "window_len"} <= init.keys()
    assert {"video", "queries"} <= inspect.signature(predictor.CoTrackerPredictor.forward).parameters.keys()
