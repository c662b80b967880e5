"""One track type per dataset directory: 3D and 2D videos never mix.

A 2D file has no depth, poses or hands, and its statistics have two displacement components
where a 3D dataset's have three: one directory holding both could not have one
``normalization_stats.yaml``, and y2r's reader takes one ``track_type`` for the whole
directory. The directory says what it holds: its ``normalization_stats.yaml`` (``track_type``,
once it counts any displacement), else its videos' statistics partials (their displacements
have 2 or 3 components), else an H5's ``root/track_type``. The YAML comes first because it is
one small file that every finished run rewrites, so a nightly registration reads no partials.
Registration checks the setting against it before any video is touched
(:func:`check_track_type`).
"""

from __future__ import annotations

import h5py
import yaml

from trackset.errors import SettingsError
from trackset.formats.h5_schema import TRACK_TYPE, root_path
from trackset.formats.layout import DatasetLayout
from trackset.formats.statistics import partials_track_type


class TrackTypeMismatchError(SettingsError):
    """``h5.track_type`` is not the track type of the videos already in the dataset directory."""


def recorded_track_type(dataset: DatasetLayout) -> tuple[str, str] | None:
    """The track type of the videos in ``dataset`` and the file that says so; None when empty.

    The statistics YAML decides when it counts any sample, else the first readable partials,
    else the first readable H5 (module docstring).
    """
    try:
        stats = yaml.safe_load(dataset.stats_yaml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        stats = None
    if isinstance(stats, dict) and stats.get("displacement_num_samples") and isinstance(stats.get("track_type"), str):
        return stats["track_type"], dataset.stats_yaml.name
    for video_id in dataset.partial_ids():
        path = dataset.partials(video_id)
        try:
            return partials_track_type(path), path.name
        except (ValueError, OSError):
            continue
    for path in sorted(dataset.root.glob("*.hdf5")):
        try:
            with h5py.File(path, "r") as f:
                value = f[root_path(TRACK_TYPE)][()]
        except (OSError, KeyError):
            continue
        return (value.decode() if isinstance(value, bytes) else str(value)), path.name
    return None


def check_track_type(dataset: DatasetLayout, wanted: str) -> None:
    """Refuse to add ``wanted`` videos to a dataset directory of the other track type.

    Raises:
        TrackTypeMismatchError: naming the directory, both types and the file that records it.
    """
    recorded = recorded_track_type(dataset)
    if recorded is None or recorded[0] == wanted:
        return
    found, evidence = recorded
    raise TrackTypeMismatchError(
        f"settings: h5.track_type is {wanted!r} but the dataset directory {dataset.root} holds {found!r} "
        f"tracks ({evidence}); 3d and 2d datasets never mix in one directory: set paths.dataset_dir to "
        f"another directory, or h5.track_type: {found}"
    )
