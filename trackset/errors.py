"""Typed errors: the retry policy and the run summary decide by type, never by message."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class TracksetError(Exception):
    """Base of every error trackset raises on purpose."""


@dataclass(frozen=True)
class SettingOrigin:
    """Where the value of a setting came from: the file (and its line), the environment (and
    the variable) or the overrides (flow parameters, the CLI's ``--set``).

    Examples:
        >>> SettingOrigin("file", "h5.target_size", "settings.yaml", 12).describe()
        'settings.yaml, line 12'
        >>> SettingOrigin("env", "h5.target_size", "TRACKSET_H5__TARGET_SIZE").describe()
        'the environment, TRACKSET_H5__TARGET_SIZE'
        >>> SettingOrigin("override", "h5.target_size").describe(lambda key: f"--set {key}=0")
        '--set h5.target_size=0'
    """

    source: Literal["file", "env", "override"]
    key: str
    where: str = ""
    line: int | None = None

    def describe(self, override_label: Callable[[str], str] | None = None) -> str:
        """Where the value came from, in words; ``override_label`` names an override's origin
        as its caller knows it (the CLI: the ``--set`` assignment)."""
        if self.source == "file":
            return f"{self.where}, line {self.line}"
        if self.source == "env":
            return f"the environment, {self.where}"
        return override_label(self.key) if override_label else f"the overrides ({self.key})"


@dataclass(frozen=True)
class SettingIssue:
    """One wrong setting: its dotted key, what is wrong, and where its value(s) came from.

    A problem of a whole section (``h5: depth_min_m must be below depth_max_m``) has the
    origin of each value of the section that was set.

    Examples:
        >>> SettingIssue("h5.target_size", "Input should be greater than 0 (got 0)").line()
        'settings: h5.target_size: Input should be greater than 0 (got 0)'
        >>> file = SettingOrigin("file", "h5.depth_max_m", "s.yaml", 3)
        >>> SettingIssue("h5", "depth_min_m must be below depth_max_m", (file,)).line()
        'settings: h5: depth_min_m must be below depth_max_m; from s.yaml, line 3 (h5.depth_max_m)'
    """

    key: str
    problem: str
    origins: tuple[SettingOrigin, ...] = ()

    def line(self, override_label: Callable[[str], str] | None = None) -> str:
        """The issue in one line, ``settings: <key>: <problem>; from <origins>``."""
        froms = []
        for origin in self.origins:
            text = origin.describe(override_label)
            # A file line does not say which key it holds; an env variable or --set does.
            froms.append(f"{text} ({origin.key})" if origin.source == "file" and origin.key != self.key else text)
        where = f"; from {' and '.join(froms)}" if froms else ""
        return f"settings: {self.key}: {self.problem}{where}"


class SettingsError(TracksetError, ValueError):
    """A setting is missing or invalid; each line of the message names one key.

    Raised with :class:`SettingIssue` records when the settings were resolved (every wrong
    key, each with where its value came from), or with a message alone.
    """

    def __init__(self, message: str, issues: Sequence[SettingIssue] = ()) -> None:
        super().__init__(message)
        self.issues = tuple(issues)

    @classmethod
    def of(cls, issues: Sequence[SettingIssue]) -> SettingsError:
        """The error of ``issues``, one line each.

        Examples:
            >>> print(SettingsError.of([SettingIssue("a.b", "bad"), SettingIssue("c", "worse")]))
            settings: a.b: bad
            settings: c: worse
        """
        return cls("\n".join(issue.line() for issue in issues), issues)

    def lines(self, override_label: Callable[[str], str] | None = None) -> list[str]:
        """One line per issue, overrides named by ``override_label`` (see :class:`SettingOrigin`)."""
        if not self.issues:
            return str(self).splitlines()
        return [issue.line(override_label) for issue in self.issues]

    def __reduce__(self) -> tuple[type, tuple[str, tuple[SettingIssue, ...]]]:
        # Keep the issues across Dask/Prefect pickling of exceptions.
        return (type(self), (str(self), self.issues))


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


class ClusterShapeError(TracksetError):
    """The Dask cluster cannot run the build as it is; the message names each worker and what
    is wrong with it (no GPU worker, trackset missing or of another version, a folder it cannot
    see, the Prefect API out of its reach)."""


class ModelUnavailableError(TracksetError):
    """``backend: real`` was chosen but the model package or its weights are missing."""
