"""The sequential final step: statistics over every video of the dataset directory.

It reads the small per-video partials (never the H5 files), merges them in sorted video-id
order and writes ``normalization_stats.yaml`` atomically. Because it always covers the
whole directory, a resumed run or a nightly refresh with nothing new rewrites the same
statistics, never only the newly processed videos (a defect of the script pipeline).
"""

from __future__ import annotations

from trackset.formats.layout import DatasetLayout
from trackset.formats.statistics import VideoPartials, aggregate, normalization_stats, write_stats_yaml


def read_partials(dataset: DatasetLayout) -> list[VideoPartials]:
    """The partials of every video in ``dataset``, in video-id order (the merge order)."""
    return [VideoPartials.read(dataset.partials(video_id)) for video_id in dataset.partial_ids()]


def write_dataset_statistics(
    dataset: DatasetLayout, std_floor: float, partials: list[VideoPartials] | None = None
) -> dict[str, object]:
    """Merge the partials of every video in ``dataset`` (or ``partials``, already read from it)
    and write the statistics YAML of its track type (that of its videos' partials; 3D for a
    dataset without any)."""
    partials = read_partials(dataset) if partials is None else partials
    track_type = partials[0].track_type if partials else "3d"
    stats = normalization_stats(aggregate(partials, track_type), std_floor, track_type)
    write_stats_yaml(dataset.stats_yaml, stats)
    return stats
