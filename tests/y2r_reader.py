"""A reader of the dataset as the script pipeline's training code reads it (test helper).

Written from a reading of hgupt3/y2r ``y2r/dataloaders/track_dataloader.py`` (its
``TrackDataset``), not copied: it finds the ``*.hdf5`` files of a directory in natural
order (``natsort.natsorted``, so ``100000.hdf5`` comes after ``99999.hdf5``), loads
``normalization_stats.yaml`` with the keys that reader indexes, keeps a ``frame_{t:04d}``
window when it has at least ``num_track_ids`` points (and the hands ``hand_mode`` asks
for), and returns one sample per kept window with the datasets ``__getitem__`` reads:
``track_type="3d"`` also reads ``root/depth`` and the window's ``poses``, ``"2d"`` only the
points. With ``text_mode`` it reads ``root/text`` per file as ``load_demo_info`` does (a
file without it gives ``""``). Tests use it to check that what trackset writes loads in the
training code's layout.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml
from natsort import natsorted

# The keys NormalizationStats reads (y2r/dataloaders/utils.py): these always, the depth and
# pose ones when the file's track_type is "3d".
STATS_KEYS_2D = ("imagenet_mean", "imagenet_std", "track_type", "track_dim", "displacement_mean", "displacement_std")
STATS_KEYS_3D = (*STATS_KEYS_2D, "depth_mean", "depth_std", "pose_mean", "pose_std")


@dataclass
class Y2RDataset:
    """The files, statistics and samples the training code would see."""

    files: list[str]
    stats: dict[str, Any]
    track_type: str = "3d"
    samples: list[tuple[int, int]] = field(default_factory=list)  # (file index, window start)
    texts: dict[int, str] = field(default_factory=dict)

    def sample(self, index: int, num_track_ts: int, hand_sides: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """The arrays ``TrackDataset.__getitem__`` reads for sample ``index`` (before normalising)."""
        file_index, start = self.samples[index]
        with h5py.File(self.files[file_index], "r") as f:
            root = f["root"]
            window = root["tracks"][f"frame_{start:04d}"]
            out = {
                "video": root["video"][start],
                "query_coords": window["query_coords"][()],
                "displacements": window["displacements"][:num_track_ts],
            }
            if self.track_type == "3d":  # TrackDataset reads depth and poses for 3D only
                out["depth"] = root["depth"][start]
                out["poses"] = window["poses"][:num_track_ts]
            for side in hand_sides:
                prefix = f"{side}_wrist"
                for key in ("query_uvd", "uvd_displacements", "query_rot_6d", "rot_displacements"):
                    out[f"{prefix}_{key}"] = window[f"{prefix}_{key}"][()]
        return out


def load_y2r(
    dataset_dir: Path,
    num_track_ids: int = 1,
    hand_mode: str | None = None,
    text_mode: bool = False,
    track_type: str = "3d",
) -> Y2RDataset:
    """Index a dataset directory as ``TrackDataset(dataset_dir=..., track_type=...)`` does."""
    files = natsorted(glob.glob(os.path.join(str(dataset_dir), "*.hdf5")))
    assert files, f"No .hdf5 files found in {dataset_dir}"
    stats = yaml.safe_load((Path(dataset_dir) / "normalization_stats.yaml").read_text())
    missing = [key for key in (STATS_KEYS_3D if stats.get("track_type") == "3d" else STATS_KEYS_2D) if key not in stats]
    assert not missing, f"normalization_stats.yaml lacks {missing}"
    dataset = Y2RDataset(files, stats, track_type)
    for file_index, name in enumerate(files):
        with h5py.File(name, "r") as f:
            root = f["root"]
            if text_mode:
                text = root["text"][()] if "text" in root else b""
                dataset.texts[file_index] = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            for t in range(root["video"].shape[0]):
                key = f"frame_{t:04d}"
                if key not in root["tracks"]:
                    continue
                window = root["tracks"][key]
                if window["query_coords"].shape[0] < num_track_ids:
                    continue
                has_left, has_right = "left_wrist_query_uvd" in window, "right_wrist_query_uvd" in window
                wanted = {"left": has_left, "right": has_right, "both": has_left and has_right, None: True}
                if wanted[hand_mode]:
                    dataset.samples.append((file_index, t))
    return dataset
