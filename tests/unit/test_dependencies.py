"""pyproject.toml's ranges, the two tested sets that pin points in them, and what gets installed.

- ``constraints.txt`` is the set README's commands install; ``constraints-oldest.txt`` pins
  every lower bound (``.ci/run`` tests both). Both must stay inside the ranges, so a range
  changed without re-locking fails here rather than in a user's environment.
- The ranges admit the models' environment: numpy 1.26.4 and Python 3.10.
- Only ``trackset`` is installed as a top-level package (``.ci/run`` also checks a real
  ``pip install .``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TESTED_SETS = ("constraints.txt", "constraints-oldest.txt")
#: Lower bounds constraints-oldest.txt does not pin, and why.
UNPINNED_FLOORS = {
    # Only the CPU build of 2.13.0 installs on the CI machines (PLATFORM-NOTES.md).
    "torch": "2.13.0",
}


def requirements() -> list[Requirement]:
    """The runtime dependencies and the test extra (what both tested sets install)."""
    texts = PROJECT["project"]["dependencies"] + PROJECT["project"]["optional-dependencies"]["test"]
    return [Requirement(text) for text in texts]


def pins(name: str) -> dict[str, Version]:
    """``{canonical name: version}`` of a constraints file."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{name}: {line!r} is not an exact pin"
            found[canonicalize_name(requirement.name)] = Version(specifier.version)
    return found


def lower_bound(specifier: SpecifierSet) -> Version | None:
    floors = [Version(s.version) for s in specifier if s.operator in (">=", "==")]
    return max(floors) if floors else None


@pytest.mark.parametrize("name", TESTED_SETS)
def test_every_dependency_is_pinned_inside_its_range(name: str) -> None:
    pinned = pins(name)
    for requirement in requirements():
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{name} does not pin {requirement.name}"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name} pins {requirement.name}=={version}, outside pyproject.toml's {requirement}: re-lock it"
        )


def test_the_oldest_set_pins_every_lower_bound() -> None:
    pinned = pins("constraints-oldest.txt")
    for requirement in requirements():
        floor = lower_bound(requirement.specifier)
        name = canonicalize_name(requirement.name)
        if floor is None:
            continue
        expected = Version(UNPINNED_FLOORS.get(name, str(floor)))
        assert pinned[name] == expected, (
            f"constraints-oldest.txt pins {name}=={pinned[name]}, but pyproject.toml's lower bound is {floor}"
        )


def test_every_runtime_dependency_has_a_lower_bound() -> None:
    """A range without one lets pip pick any old release (``sqlalchemy 0.1`` would be admitted)."""
    runtime = [Requirement(text) for text in PROJECT["project"]["dependencies"]]
    assert [str(r) for r in runtime if lower_bound(r.specifier) is None] == []


def test_the_models_environment_is_admitted() -> None:
    """numpy 1.26.4 (DiffuEraser's pin; SAM3 and TAPIP3D need numpy < 2) and Python 3.10 (WiLoR)."""
    ranges = {canonicalize_name(r.name): r.specifier for r in requirements()}
    assert ranges["numpy"].contains("1.26.4")
    assert ranges["numpy"].contains(str(pins("constraints.txt")["numpy"]))
    assert SpecifierSet(PROJECT["project"]["requires-python"]).contains("3.10.0")


def test_only_trackset_is_a_top_level_package() -> None:
    setuptools = PROJECT["tool"]["setuptools"]
    tops = {package.split(".")[0] for package in setuptools["packages"]} | {
        name.split(".")[0] for name in setuptools.get("package-dir", {})
    }
    assert tops == {"trackset"}
