"""Typed errors: the retry policy and the run summary decide by type, never by message."""

from __future__ import annotations

from pathlib import Path


class TracksetError(Exception):
    """Base of every error trackset raises on purpose."""


class SettingsError(TracksetError, ValueError):
    """A setting is missing or invalid; the message names the key in one line."""


class VideoError(TracksetError):
    """A video cannot go through a stage; never retried, fails that video only.

    The message always names the video id, the stage, the file and the reason, so a line of
    the run summary is enough to find the culprit.
    """

    def __init__(self, video_id: str, stage: str, path: Path | str | None, reason: str) -> None:
        self.video_id = video_id
        self.stage = stage
        self.path = str(path) if path is not None else None
        self.reason = reason
        where = f" ({self.path})" if self.path else ""
        super().__init__(f"video {video_id}, stage {stage}{where}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str | None, str]]:
        # Keep the typed fields across Dask/Prefect pickling of exceptions.
        return (type(self), (self.video_id, self.stage, self.path, self.reason))


class UnusableVideoError(VideoError):
    """The content is unusable (e.g. too many flat depth frames, no decodable frames)."""


class BadInputError(VideoError):
    """An input file is missing, corrupt, of the wrong shape/dtype or from another video."""


class ModelUnavailableError(TracksetError):
    """``backend: real`` was chosen but the model package or its weights are missing."""
