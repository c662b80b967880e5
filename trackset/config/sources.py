"""Where each setting came from, so that a wrong value is reported with its origin.

Settings merge the overrides, the ``TRACKSET_*`` environment and the YAML file
(:mod:`trackset.config.settings`); pydantic's validation errors only say which key is wrong. A
person fixing it needs to know *where* the value was written: the file and its line, the
environment variable, or the override (the CLI's ``--set``). :class:`SettingSources` keeps
the three raw inputs and answers that for a key, with the precedence the merge uses (the
first source holding a key wins; pydantic-settings merges sources key by key).
:func:`validation_issues` turns a whole ``ValidationError`` into one
:class:`~trackset.errors.SettingIssue` per wrong key: every error, not just the first.

Examples:
    >>> sources = SettingSources(overrides={"h5": {"target_size": 0}})
    >>> sources.origins(("h5", "target_size"))
    (SettingOrigin(source='override', key='h5.target_size', where='', line=None),)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from trackset.errors import SettingIssue, SettingOrigin, SettingsError

Key = tuple[str | int, ...]

_YAML_KEY = re.compile(r"^( *)(?:- +)?([A-Za-z0-9_.\-]+) *:(?: |$)")


def dotted(key: Key) -> str:
    """A key path as users write it.

    Examples:
        >>> dotted(("cluster", "fake_gpus", 0, "memory_gb"))
        'cluster.fake_gpus.0.memory_gb'
    """
    return ".".join(str(part) for part in key)


def yaml_key_at(text: str, line: int) -> str:
    """The dotted key whose block holds 0-based ``line`` of a YAML text, read from indentation
    alone, so that it works on a file the parser rejected.

    Examples:
        >>> yaml_key_at("h5:\\n  target_size: [1\\n  compression: lzf\\n", 1)
        'h5.target_size'
        >>> yaml_key_at("run:\\n  wave_size: 3\\nh5:\\n  # note\\n", 3)
        'h5'
    """
    stack: list[tuple[int, str]] = []
    for raw in text.splitlines()[: line + 1]:
        match = _YAML_KEY.match(raw)
        if match is None:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
    return ".".join(key for _, key in stack)


def _syntax_error(path: Path, text: str, exc: yaml.YAMLError) -> SettingsError:
    """The file, line, column and key of a YAML syntax error, in one line."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return SettingsError(f"settings: {path}: not valid YAML: {exc}".splitlines()[0])
    mark = exc.problem_mark
    started = exc.context_mark if exc.context_mark is not None else mark
    key = yaml_key_at(text, started.line)
    context = f" ({exc.context}, line {exc.context_mark.line + 1})" if exc.context and exc.context_mark else ""
    under = f", in {key}" if key else ""
    return SettingsError(
        f"settings: {path}, line {mark.line + 1}, column {mark.column + 1}{under}: "
        f"not valid YAML: {exc.problem}{context}"
    )


def _node_lines(node: yaml.Node, key: Key, lines: dict[Key, int]) -> None:
    """The 1-based line of every key (and list item) under ``node``."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            child = (*key, str(key_node.value))
            lines[child] = key_node.start_mark.line + 1
            _node_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*key, index)
            lines[child] = item.start_mark.line + 1
            _node_lines(item, child, lines)


def read_settings_file(path: Path) -> tuple[dict[str, Any], dict[Key, int]]:
    """A settings YAML's values and the line of each key.

    Raises:
        SettingsError: naming the file, line, column and key of a syntax error, or saying
            that the file is not UTF-8 text or not a mapping of sections.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(f"settings: {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _syntax_error(path, text, exc) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"settings: {path}: must hold a mapping of sections (h5:, run:, ...), not a {type(data).__name__}"
        )
    lines: dict[Key, int] = {}
    if node is not None:
        _node_lines(node, (), lines)
    return data, lines


def _walk(value: Any, key: Key) -> tuple[bool, Any, int]:
    """Follow ``key`` into nested mappings and lists: (found, value, parts followed).

    When a part is missing, ``found`` is False and the count says how far it got; when a
    value that is neither a mapping nor a list stops the walk early, that value is returned
    with ``found`` True: it is what the deeper key was validated from.
    """
    for depth, part in enumerate(key):
        if not isinstance(value, Mapping | list):
            return True, value, depth
        if isinstance(value, Mapping):
            if part not in value:
                return False, None, depth
            value = value[part]
        elif isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            return False, None, depth
    return True, value, len(key)


def _leaves(value: Any, key: Key) -> Iterator[Key]:
    """Every key under ``value`` that holds something other than a mapping."""
    if isinstance(value, Mapping) and value:
        for name, child in value.items():
            yield from _leaves(child, (*key, str(name)))
    else:
        yield key


@dataclass
class SettingSources:
    """The raw inputs of one :func:`~trackset.config.settings.load_settings` call.

    Attributes:
        overrides: the nested overrides.
        env: ``{variable: value}`` of the ``TRACKSET_*`` environment.
        file: the settings YAML, if any, with its values and the line of each key.
    """

    overrides: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    file: Path | None = None
    file_data: Mapping[str, Any] = field(default_factory=dict)
    file_lines: Mapping[Key, int] = field(default_factory=dict)
    prefix: str = "TRACKSET_"
    delimiter: str = "__"

    @classmethod
    def collect(
        cls, path: Path | None, overrides: Mapping[str, Any] | None, environ: Mapping[str, str]
    ) -> SettingSources:
        """Read the file (checking its syntax) and keep the ``TRACKSET_*`` environment."""
        data, lines = read_settings_file(path) if path is not None else ({}, {})
        prefix = cls.prefix
        env = {name: value for name, value in environ.items() if name.upper().startswith(prefix)}
        return cls(overrides or {}, env, path, data, lines)

    def env_keys(self) -> dict[Key, str]:
        """Key paths the environment sets (names are case-insensitive), to their variable."""
        return {
            tuple(name[len(self.prefix) :].lower().split(self.delimiter)): name
            for name in self.env
            if len(name) > len(self.prefix)
        }

    def _from_env(self, key: Key) -> tuple[bool, Any, SettingOrigin | None]:
        """The environment's value at ``key``: a variable of exactly that key, or a JSON
        variable of a section above it (``TRACKSET_H5='{"target_size": 0}'``)."""
        variables = self.env_keys()
        for depth in range(len(key), 0, -1):
            name = variables.get(tuple(str(p) for p in key[:depth]))
            if name is None:
                continue
            if depth == len(key):
                return True, self.env[name], SettingOrigin("env", dotted(key), name)
            try:
                found, value, _ = _walk(json.loads(self.env[name]), key[depth:])
            except ValueError:
                return False, None, None
            if found:
                return True, value, SettingOrigin("env", dotted(key), name)
        return False, None, None

    def _winner(self, key: Key) -> tuple[bool, Any, SettingOrigin | None]:
        """The value at ``key`` of the first source that holds it, and where it is."""
        found, value, depth = _walk(self.overrides, key)
        if found:
            return True, value, SettingOrigin("override", dotted(key[: max(depth, 1)]))
        found, value, origin = self._from_env(key)
        if found:
            return True, value, origin
        found, value, depth = _walk(self.file_data, key)
        if found and self.file is not None:
            held = key[: max(depth, 1)]
            return True, value, SettingOrigin("file", dotted(held), str(self.file), self.file_lines.get(held))
        return False, None, None

    def origins(self, key: Key) -> tuple[SettingOrigin, ...]:
        """Where the value at ``key`` came from: one origin for a value, one per value set
        below ``key`` for a section (its problem may lie in any of them); none for a default."""
        found, value, origin = self._winner(key)
        if found and origin is not None and not isinstance(value, Mapping):
            return (origin,)
        below: set[Key] = set()
        for source in (self.overrides, self.file_data):
            found, value, _ = _walk(source, key)
            if found and isinstance(value, Mapping):
                below.update(_leaves(value, key))
        below.update(k for k in self.env_keys() if k[: len(key)] == tuple(map(str, key)) and len(k) > len(key))
        winners = (self._winner(leaf)[2] for leaf in sorted(below, key=dotted))
        return tuple(dict.fromkeys(o for o in winners if o is not None))


def _section_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings model a field holds, and whether it holds a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


def field_key(model: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[Key, Key]:
    """Split a pydantic error location into the settings key and what lies below it (list
    indices, and the tags pydantic gives the members of a union).

    Examples:
        >>> from trackset.config.settings import Settings
        >>> field_key(Settings, ("cluster", "gpus", "list[int]", 1))
        (('cluster', 'gpus'), ('list[int]', 1))
        >>> field_key(Settings, ("cluster", "fake_gpus", 0, "memory_gb"))
        (('cluster', 'fake_gpus', 0, 'memory_gb'), ())
    """
    current: type[BaseModel] | None = model
    in_list = False
    key: list[str | int] = []
    for part in loc:
        if in_list and isinstance(part, int):
            key.append(part)
            in_list = False
        elif current is not None and not in_list and isinstance(part, str) and part in current.model_fields:
            key.append(part)
            current, in_list = _section_model(current.model_fields[part].annotation)
        else:
            break
    return tuple(key), tuple(loc[len(key) :])


def _problem(error: ErrorDetails, below: Key, renamed: Mapping[str, str], key: Key) -> str:
    if error["type"] == "extra_forbidden":
        moved = renamed.get(dotted(key))
        return f"unknown key (renamed to {moved})" if moved else "unknown key"
    message = error["msg"].removeprefix("Value error, ")
    got = error.get("input")
    suffix = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    index = "".join(f"[{part}]" for part in below if isinstance(part, int))
    return f"{index}{' ' if index else ''}{message}{suffix}"


def _joined(problems: list[str]) -> str:
    """The problems of one key (a union's members each say why they did not fit), as one.

    Examples:
        >>> _joined(["Input should be 'auto' (got 'x')", "Input should be a valid list (got 'x')"])
        "Input should be 'auto' (got 'x'), or a valid list (got 'x')"
    """
    head, *rest = problems
    return ", or ".join([head, *(p.removeprefix("Input should be ") for p in rest)])


def validation_issues(
    exc: ValidationError, model: type[BaseModel], sources: SettingSources, renamed: Mapping[str, str]
) -> list[SettingIssue]:
    """Every error of ``exc`` as an issue naming its dotted key and its origin, in order;
    the errors of one key (a union's members) become one issue."""
    problems: dict[Key, list[str]] = {}
    for error in exc.errors():
        key, below = field_key(model, tuple(error["loc"]))
        if error["type"] == "extra_forbidden" and below:
            key, below = (*key, below[-1]), ()
        text = _problem(error, below, renamed, key)
        if text not in problems.setdefault(key, []):
            problems[key].append(text)
    return [SettingIssue(dotted(key), _joined(texts), sources.origins(key)) for key, texts in problems.items()]


_FIELD = re.compile(r'error parsing value for field "([^"]+)"')


def env_parse_issue(exc: ValueError, sources: SettingSources) -> SettingIssue:
    """pydantic-settings' error for a ``TRACKSET_*`` value of a section or list that is not
    JSON, naming the variable (pydantic-settings names only the field)."""
    match = _FIELD.search(str(exc))
    if match is None:
        return SettingIssue("(settings)", str(exc).splitlines()[0])
    name = match.group(1)
    for key, variable in sources.env_keys().items():
        if key[0] != name:
            continue
        try:
            json.loads(sources.env[variable])
        except ValueError:
            origin = SettingOrigin("env", dotted(key), variable)
            return SettingIssue(dotted(key), f"not valid JSON (got {sources.env[variable]!r})", (origin,))
    return SettingIssue(name, str(exc).splitlines()[0])
