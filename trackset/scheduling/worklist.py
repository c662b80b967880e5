"""Work lists: the videos of one stage subflow, kept in a temporary file.

Prefect ships a flow run's parameters with every task the flow submits (the serialised
flow-run context holds the run and its parameters) and stores them with the run in its
database. A ``process-stage`` subflow given its stage's video list as a parameter would
send O(N) bytes with each of its N tasks, O(N^2) per stage, through the flow process, the
Dask scheduler and the workers (measured with prefect 3.8.8: 10 KB of pickled context per
task with 1 video, 46 KB with 200, 187 KB with 1,000). The subflow takes this small
handle instead and reads the list from disk. Subflows run in the flow's own process, so
the file is local to it: a temporary file, never in the work directory (which
``import-intermediates`` only reads).

Examples:
    >>> refs = [VideoRef("00007", Path("videos/a.mp4"), "ab12")]
    >>> with WorkList.written("h5_build", refs) as work:
    ...     loaded, on_disk = work.load(), work.path.is_file()
    >>> loaded == refs, work.videos, on_disk, work.path.exists()
    (True, 1, True, False)
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trackset.domain import VideoRef


@dataclass(frozen=True)
class WorkList:
    """Where a stage subflow finds its videos, and how many there are (shown in the UI)."""

    path: Path
    videos: int

    @classmethod
    @contextmanager
    def written(cls, stage: str, videos: list[VideoRef]) -> Iterator[WorkList]:
        """Write ``videos`` to a new temporary file; remove it when the block ends."""
        handle, name = tempfile.mkstemp(prefix=f"trackset-{stage}-", suffix=".json")
        path = Path(name)
        try:
            rows = [{"video_id": v.video_id, "source": str(v.source), "content_hash": v.content_hash} for v in videos]
            with open(handle, "w") as out:  # read only after this block: no need for a rename
                json.dump({"stage": stage, "videos": rows}, out)
            yield cls(path, len(videos))
        finally:
            path.unlink(missing_ok=True)

    def load(self) -> list[VideoRef]:
        """The videos, in the order they were written."""
        rows = json.loads(Path(self.path).read_text())["videos"]
        return [VideoRef(row["video_id"], Path(row["source"]), row["content_hash"]) for row in rows]
