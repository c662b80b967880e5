"""Per clip, what its object masks and text came to: the demo's table after a build.

For every H5 of a dataset (natural order): its ``root/text``, the prompt its object masks
were made with, the share of its frames' pixels the masks cover, and how many points its
windows hold on average, so a reader sees at once that the tracks start on the objects the
text talks about.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from trackset.domain import is_video_id, video_id_order
from trackset.formats import h5_schema as schema
from trackset.formats.layout import WorkLayout
from trackset.formats.npy import read_npz


@dataclass(frozen=True)
class ClipRow:
    """One clip of the table; ``prompt`` is ``""`` without object masks."""

    video_id: str
    text: str
    prompt: str
    mask_percent: float
    points_per_window: float


def clip_rows(work_dir: Path, dataset_dir: Path) -> list[ClipRow]:
    """The table's rows for every ``<vid>.hdf5`` of ``dataset_dir`` (module docstring)."""
    work = WorkLayout(Path(work_dir))
    ids = sorted((p.stem for p in Path(dataset_dir).glob("*.hdf5") if is_video_id(p.stem)), key=video_id_order)
    rows = []
    for video_id in ids:
        with h5py.File(Path(dataset_dir) / f"{video_id}.hdf5", "r") as f:
            root = f[schema.ROOT]
            raw = root[schema.TEXT][()] if schema.TEXT in root else b""
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            windows = list(root[schema.TRACKS].values())
            points = float(np.mean([w[schema.QUERY_COORDS].shape[0] for w in windows])) if windows else 0.0
        prompt, percent = "", 0.0
        masks_path = work.object_masks(video_id)
        if masks_path.is_file():
            data = read_npz(masks_path, ("prompt", "masks"))
            prompt = str(data["prompt"])
            percent = 100.0 * float(data["masks"].mean()) if data["masks"].size else 0.0
        rows.append(ClipRow(video_id, text, prompt, round(percent, 1), round(points, 1)))
    return rows
