"""Memory profiles kept beside the work directory, so later waves and runs need not re-profile.

Profiling a GPU stage costs its first videos run one worker per GPU. A build in waves
profiles each GPU stage on its first wave and sizes every later wave from that peak; the
peak is also written to ``<work_dir>/profiles/<stage>.json`` so the next run (a nightly
refresh, a resume) starts from it and says so in its log.

A stored profile is used only while the inputs that decide the peak are the same: the
stage's config (backend, its settings, its synthetic cost: :meth:`StageConfig.cache_key`).
The peak is the stage's, not the GPU's: one measured on a 40 GB card sizes an 80 GB card
(and the SLURM jobs of the next run, whichever GPUs they land on), each by what it has
available now, so a busier or smaller GPU gets fewer workers. An out-of-memory shrink means
the peak was under-estimated (a GPU whose kernels need more, a longer video): the caller
forgets the profile and the next wave profiles again.

Examples:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     store = ProfileStore(Path(tmp))
    ...     store.save("hands", "cfg1", 6 * 2**30)
    ...     store.load("hands", "cfg1").peak_bytes == 6 * 2**30, store.load("hands", "cfg2")
    (True, None)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from trackset.formats.layout import WorkLayout, write_text_atomic
from trackset.stages.config import short_hash


def sizing_key(config_key: str) -> str:
    """What a stored peak is valid for: the stage's config."""
    return short_hash(config_key)


@dataclass(frozen=True)
class StoredProfile:
    """A stage's measured peak and what it was measured for."""

    stage: str
    key: str
    peak_bytes: int


class ProfileStore:
    """The ``profiles/`` folder of a work directory."""

    def __init__(self, work_dir: Path) -> None:
        self.folder = WorkLayout(Path(work_dir)).profiles

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def load(self, stage: str, config_key: str) -> StoredProfile | None:
        """The stored profile of ``stage`` if it was measured for these inputs, else None."""
        try:
            data = json.loads(self.path(stage).read_text())
            stored = StoredProfile(str(data["stage"]), str(data["key"]), int(data["peak_bytes"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return stored if stored.key == sizing_key(config_key) and stored.peak_bytes > 0 else None

    def save(self, stage: str, config_key: str, peak_bytes: int) -> None:
        """Record the peak measured for these inputs (replacing any earlier one)."""
        record = StoredProfile(stage, sizing_key(config_key), peak_bytes)
        write_text_atomic(self.path(stage), json.dumps(asdict(record), sort_keys=True))

    def forget(self, stage: str) -> None:
        """Drop the stored profile (it under-estimated: a wave ran out of memory)."""
        self.path(stage).unlink(missing_ok=True)
