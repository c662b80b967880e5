"""What made a file: trackset's version, each stage's backend and model, and its settings.

Every H5 file carries these as attributes of its root (``/``), so which code, models and
settings produced a dataset can be read from the files themselves, long after the run
(``h5dump -A``, ``h5py.File(path).attrs``); ``trackset validate`` checks they are there. The
training code reads datasets, never attributes, so nothing it loads changes.

A stage's config holds its own entries and those of every stage it reads from, chained as
its fingerprint's lineage is (:func:`trackset.stages.registry.stage_config`), so an H5 file
names exactly the stages whose outputs went into it. The entries, under ``trackset.``:

- ``version``: the trackset version; ``stages``: the stages, in pipeline order (JSON list);
- per stage ``<stage>.settings``: what enters its fingerprint (JSON, sorted keys) and
  ``<stage>.inputs``: the stages it read (JSON list);
- per GPU stage ``<stage>.backend`` (``synthetic`` | ``real``) and ``<stage>.model``: the
  real model's installed distribution and version, or ``synthetic``. A synthetic backend
  seeds its noise and query sampling with the video's id (``<stage>.seed``, per file,
  :func:`file_attributes`). A real backend's weights are named by content: ``<stage>.<setting>.sha256``
  for each file or folder setting of its section (a folder: the digest over its files'
  digests; ``none`` when unset and the model downloads its own).

Hashing a multi-GB checkpoint for every video would cost more than the video: a file is
hashed once per process and remembered by its path, size and modification time
(:func:`file_sha256`), so a run hashes each checkpoint once and a changed one again.

Everything here is an input of the build, never a time, host or run id: two builds of the
same corpus with the same settings write the same bytes (DECISIONS.md, "Determinism").
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import types
import typing
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from trackset import __version__
from trackset.domain import STAGE_ORDER, StageName, VideoRef

PREFIX = "trackset."
VERSION = f"{PREFIX}version"
STAGES = f"{PREFIX}stages"
VIDEO_ID = f"{PREFIX}video_id"
CONTENT_SHA256 = f"{PREFIX}content_sha256"
FINGERPRINT = f"{PREFIX}fingerprint"
IMPORTED = f"{PREFIX}imported"
SYNTHETIC = "synthetic"
UNSET = "none"

_CHUNK = 1 << 22
_hashes: dict[tuple[str, int, int], str] = {}
_hashes_lock = threading.Lock()


def stage_key(stage: str, entry: str) -> str:
    """The attribute name of one of a stage's entries.

    Examples:
        >>> stage_key("tracks_3d", "weights_path.sha256")
        'trackset.tracks_3d.weights_path.sha256'
    """
    return f"{PREFIX}{stage}.{entry}"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, computed once per process for each (path, size, mtime).

    Examples:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     _ = f.write(b"abc"); f.flush()
        ...     file_sha256(Path(f.name))[:16]
        'ba7816bf8f01cfea'
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hashes_lock:
        known = _hashes.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    with _hashes_lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def tree_sha256(folder: Path) -> str:
    """Digest of a folder's regular files: their relative paths and :func:`file_sha256`.

    Hidden entries (``.git``, editor files) and symbolic links are left out: a model cache's
    links point at blobs it also holds, and a checkout's history is not its content.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = (Path(tmp) / "w.bin").write_bytes(b"abc")
        ...     before = tree_sha256(Path(tmp))
        ...     _ = (Path(tmp) / ".cache").write_bytes(b"ignored")
        ...     before == tree_sha256(Path(tmp))
        True
    """
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                continue
            digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def content_sha256(path: Path | None) -> str:
    """A model setting's file or folder named by its content; ``none`` when unset.

    A path that cannot be read is named as such rather than failing the run: the run's
    start already checks every real model's files (``trackset.adapters.check_real_backends``).

    Examples:
        >>> content_sha256(None)
        'none'
        >>> content_sha256(Path("/surely/not/here.pt"))
        'unreadable: /surely/not/here.pt is neither a file nor a folder'
    """
    if path is None:
        return UNSET
    try:
        if path.is_file():
            return file_sha256(path)
        if path.is_dir():
            return tree_sha256(path)
    except OSError as exc:
        return f"unreadable: {exc}"
    return f"unreadable: {path} is neither a file nor a folder"


def distribution_version(distribution: str) -> str:
    """``"<distribution> <version>"`` of an installed distribution; a research checkout
    (no distribution named, or none installed) says so.

    Examples:
        >>> distribution_version("pyyaml").split()[0]
        'pyyaml'
        >>> distribution_version("")
        'checkout (no installed distribution; weights named by sha256)'
    """
    if not distribution:
        return "checkout (no installed distribution; weights named by sha256)"
    try:
        return f"{distribution} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{distribution} (not installed here)"


def path_settings(section: BaseModel) -> dict[str, Path | None]:
    """The settings of ``section`` that name files or folders: a real model's weights.

    Examples:
        >>> from trackset.config.settings import HandsSettings
        >>> path_settings(HandsSettings(weights_dir=Path("/opt/WiLoR")))
        {'weights_dir': PosixPath('/opt/WiLoR')}
    """
    found: dict[str, Path | None] = {}
    for name, field in type(section).model_fields.items():
        annotation = field.annotation
        options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
        if Path in options:
            found[name] = getattr(section, name)
    return found


def stage_entries(
    stage: StageName,
    settings: Mapping[str, Any],
    inputs: list[str],
    section: BaseModel | None = None,
    distribution: str = "",
) -> dict[str, str]:
    """One stage's own entries (module docstring); ``section`` only for a model stage.

    Examples:
        >>> from trackset.config.settings import HandsSettings
        >>> entries = stage_entries("hands", {"section": {}}, ["depth_camera"], HandsSettings())
        >>> entries["trackset.hands.model"], entries["trackset.hands.inputs"]
        ('synthetic', '["depth_camera"]')
    """
    entries = {
        stage_key(stage, "settings"): json.dumps(settings, sort_keys=True),
        stage_key(stage, "inputs"): json.dumps(inputs),
    }
    if section is None:
        return entries
    backend = getattr(section, "backend")  # noqa: B009 - every model section has one
    entries[stage_key(stage, "backend")] = backend
    if backend == SYNTHETIC:
        entries[stage_key(stage, "model")] = SYNTHETIC
        return entries
    entries[stage_key(stage, "model")] = distribution_version(distribution)
    for name, path in path_settings(section).items():
        entries[stage_key(stage, f"{name}.sha256")] = content_sha256(path)
    return entries


def chained(stage: StageName, own: Mapping[str, str], upstream: list[Mapping[str, str]]) -> dict[str, str]:
    """A config's provenance: its own entries, its inputs' (and theirs), trackset's version
    and the stages, in pipeline order.

    Examples:
        >>> a = chained("preprocess", {"trackset.preprocess.settings": "{}"}, [])
        >>> b = chained("h5_build", {"trackset.h5_build.settings": "{}"}, [a])
        >>> b["trackset.stages"], sorted(b) == sorted({**a, **b})
        ('["preprocess", "h5_build"]', True)
    """
    merged: dict[str, str] = {}
    stages = {stage}
    for entries in upstream:
        merged.update(entries)
        stages.update(json.loads(entries[STAGES]))
    merged.update(own)
    merged[VERSION] = __version__
    merged[STAGES] = json.dumps(sorted(stages, key=STAGE_ORDER.index))
    return merged


def file_attributes(
    provenance: Mapping[str, str], video: VideoRef, fingerprint: str, imported: bool = False
) -> dict[str, str | int]:
    """The attributes of one video's H5 file: its config's provenance and the video's own.

    A video built from the script pipeline's intermediates (an import) names them instead
    of the stages that did not run here: only the H5 build's entries are kept.

    Examples:
        >>> from trackset.config.settings import HandsSettings
        >>> hands = chained("hands", stage_entries("hands", {}, [], HandsSettings()), [])
        >>> attrs = file_attributes(hands, VideoRef("00042", Path("a.mp4"), "ab" * 32), "f" * 16)
        >>> attrs["trackset.hands.seed"], attrs["trackset.video_id"]
        (42, '00042')
    """
    attributes: dict[str, str | int] = {}
    if imported:
        stages = ["h5_build"]
        attributes.update(
            {key: value for key, value in provenance.items() if key.startswith(stage_key("h5_build", ""))}
        )
        attributes[IMPORTED] = "the y2r script pipeline's intermediates"
    else:
        stages = json.loads(provenance[STAGES])
        attributes.update(provenance)
        for stage in stages:
            if provenance.get(stage_key(stage, "backend")) == SYNTHETIC:
                attributes[stage_key(stage, "seed")] = int(video.video_id)
    attributes[VERSION] = provenance[VERSION]
    attributes[STAGES] = json.dumps(stages)
    attributes[VIDEO_ID] = video.video_id
    attributes[CONTENT_SHA256] = video.content_hash
    attributes[FINGERPRINT] = fingerprint
    return attributes


def attribute_problems(attributes: Mapping[str, Any], video_id: str, fingerprint: str | None) -> list[str]:
    """What is missing or wrong in one H5 file's provenance (empty when nothing is).

    Args:
        attributes: the file's root attributes.
        video_id: the video the file is named for.
        fingerprint: the one its statistics partials hold (None when they cannot be read):
            the file must be the one those partials were computed from.

    Examples:
        >>> from trackset.config.settings import Settings
        >>> from trackset.stages.registry import stage_config
        >>> config = stage_config("h5_build", Settings())
        >>> attrs = file_attributes(config.provenance, VideoRef("00007", Path("a.mp4"), "ab"), "f1")
        >>> attribute_problems(attrs, "00007", "f1")
        []
        >>> for problem in attribute_problems({**attrs, "trackset.tracks_3d.seed": 8}, "00007", "f2"):
        ...     print(problem)
        trackset.fingerprint: f1, but its partials hold f2
        trackset.tracks_3d.seed: 8, expected 7 (the video id)
    """
    if not any(str(key).startswith(PREFIX) for key in attributes):
        return ["no trackset.* attributes: written before trackset recorded provenance, or by another tool"]
    problems = []
    for key in (VERSION, STAGES, VIDEO_ID, CONTENT_SHA256, FINGERPRINT):
        if not isinstance(attributes.get(key), str):
            problems.append(f"{key}: {'missing' if key not in attributes else 'not a string'}")
    if attributes.get(VIDEO_ID, video_id) != video_id:
        problems.append(f"{VIDEO_ID}: {attributes[VIDEO_ID]}, but the file is named for {video_id}")
    recorded = attributes.get(FINGERPRINT)
    if fingerprint is not None and isinstance(recorded, str) and recorded != fingerprint:
        problems.append(f"{FINGERPRINT}: {recorded}, but its partials hold {fingerprint}")
    try:
        stages = json.loads(attributes[STAGES])
    except (KeyError, TypeError, ValueError):
        return problems + ([f"{STAGES}: not a JSON list of stages"] if isinstance(attributes.get(STAGES), str) else [])
    unknown = [stage for stage in stages if stage not in STAGE_ORDER] if isinstance(stages, list) else [stages]
    if unknown or "h5_build" not in stages:
        return [*problems, f"{STAGES}: {attributes[STAGES]} is not a list of stages ending in h5_build"]
    for stage in stages:
        problems += _stage_problems(attributes, stage, video_id)
    return problems


def _stage_problems(attributes: Mapping[str, Any], stage: str, video_id: str) -> list[str]:
    """What is missing or wrong in one stage's entries of a file's provenance."""
    problems = []
    for entry, kind in (("settings", dict), ("inputs", list)):
        key = stage_key(stage, entry)
        try:
            valid = isinstance(json.loads(attributes[key]), kind)
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            what = "missing" if key not in attributes else f"not a JSON {'object' if kind is dict else 'list'}"
            problems.append(f"{key}: {what}")
    backend = attributes.get(stage_key(stage, "backend"))
    if backend is None:
        return problems
    if backend not in (SYNTHETIC, "real") or not isinstance(attributes.get(stage_key(stage, "model")), str):
        problems.append(f"{stage_key(stage, 'backend')}: {backend!r} without a model, expected synthetic or real")
    seed = attributes.get(stage_key(stage, "seed"))
    if backend == SYNTHETIC and seed != int(video_id):
        problems.append(f"{stage_key(stage, 'seed')}: {seed}, expected {int(video_id)} (the video id)")
    return problems
