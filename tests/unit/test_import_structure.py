"""The layering rules of DECISIONS.md, checked on the source: what may import what.

- ``trackset/`` is the pure core: it never imports Prefect, ``trackset.tasks``,
  ``trackset.engine`` or ``trackset.flows`` (the repository's ``tasks/``, ``engine/`` and
  ``flows/`` folders, installed under the ``trackset`` name).
- ``trackset/stages/`` never imports ``trackset/synthetic/`` (backends are named by string
  in the stage table).
- ``trackset/domain.py`` is the bottom layer: it imports nothing of trackset.
- Above the core, flows -> engine -> tasks: ``trackset.engine`` (the repository's
  ``engine/``) never imports ``trackset.flows``, and ``trackset.tasks`` imports neither.
- The wave planner (``trackset.scheduling.planner``) loads neither Prefect nor Dask: a
  simulator runs it at 50,000 videos where neither is installed.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on Python 3.10
    import tomli as tomllib

PACKAGE = Path(__file__).resolve().parents[2] / "trackset"
PREFECT_SIDE = ("trackset.tasks", "trackset.engine", "trackset.flows")


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (absolute form)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            else:
                found.add(node.module or "")
    return found


def modules_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def offenders(folder: Path, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Files under ``folder`` importing a module equal to or below one of ``forbidden``."""
    bad: dict[str, list[str]] = {}
    for path in modules_under(folder):
        hits = sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if hits:
            bad[str(path.relative_to(PACKAGE.parent))] = hits
    return bad


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    fake = tmp_path / "trackset" / "stages" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    import prefect\n    from ..synthetic import backends\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "trackset")
    assert imported_modules(fake) == {"prefect", "trackset.synthetic"}


def test_the_core_never_imports_prefect_tasks_or_flows():
    assert offenders(PACKAGE, ("prefect", "prefect_dask", *PREFECT_SIDE)) == {}


def test_stages_never_import_the_synthetic_backends():
    assert offenders(PACKAGE / "stages", ("trackset.synthetic",)) == {}


@pytest.mark.parametrize(
    "module", ["trackset.stages.registry", "trackset.cluster.worker_cache", "trackset.dataset.registration"]
)
def test_importing_the_core_loads_neither_prefect_nor_a_synthetic_backend(module):
    code = (
        f"import sys, {module}; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] == 'prefect' or m.startswith({PREFECT_SIDE}) "
        "or m.startswith('trackset.synthetic')); print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def side_offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """Files of the repository folder ``folder`` (``engine``, ``tasks``) importing ``forbidden``."""
    root = PACKAGE.parent / folder
    bad: dict[str, list[str]] = {}
    for path in modules_under(root):
        tree = ast.parse(path.read_text(), filename=str(path))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
        hits = sorted(m for m in names if any(m == f or m.startswith(f + ".") for f in forbidden))
        if hits:
            bad[str(path.relative_to(PACKAGE.parent))] = hits
    return bad


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [("engine", ("trackset.flows",)), ("tasks", ("trackset.engine", "trackset.flows"))],
)
def test_the_prefect_side_imports_only_downwards(folder, forbidden):
    """flows -> engine -> tasks -> core: the engine is handed what it needs of the flows
    (the ``profile-memory`` subflow), and the tasks know neither."""
    assert side_offenders(folder, forbidden) == {}


def test_the_wave_planner_loads_neither_prefect_nor_dask():
    code = (
        "import sys, trackset.scheduling.planner; "
        "engines = ('prefect', 'prefect_dask', 'dask', 'distributed'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in engines); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_package_folder_is_installed_under_the_trackset_name():
    """pyproject.toml lists the packages by hand (flows/, tasks/, engine/ go in as
    ``trackset.*``): a new subpackage missing there would be absent from a plain install."""
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    folders = {".".join(init.parent.relative_to(PACKAGE.parent).parts) for init in PACKAGE.rglob("__init__.py")}
    mapped = pyproject["tool"]["setuptools"]["package-dir"]
    assert set(pyproject["tool"]["setuptools"]["packages"]) == folders | set(mapped)
    assert {name: folder for name, folder in mapped.items()} == {side: side.split(".")[1] for side in PREFECT_SIDE}


ROOMS: dict[str, set[str]] = {
    "config": {"domain", "errors"},
    "formats": {"domain", "errors", "config", "geometry"},
    "geometry": set(),
    "gpu": {"domain", "errors", "config", "formats"},
    "stages": {"domain", "errors", "config", "formats", "geometry", "gpu"},
    "adapters": {"domain", "errors", "config", "formats", "geometry", "gpu", "stages"},
    "synthetic": {"domain", "errors", "config", "formats", "geometry", "gpu"},
    "cluster": {"domain", "errors", "config", "formats", "gpu", "stages"},
    "scheduling": {"domain", "errors", "config", "formats", "gpu", "stages", "cluster"},
    "dataset": {"domain", "errors", "config", "formats", "geometry", "stages"},
    "reports": {"domain", "errors", "config", "formats"},
    "checks": {"domain", "errors", "config", "formats", "geometry", "gpu", "stages", "synthetic", "scheduling"},
}
"""What each room of ``trackset/`` may import besides itself (and ``trackset.__version__``):
a layered order, so no room reaches back into one built on top of it."""


def room_of(module: str) -> str | None:
    """The room a ``trackset.<room>...`` module name is in; None for the package itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "trackset" and len(parts) > 1 else None


def test_every_room_is_listed_and_every_folder_is_a_room():
    folders = {init.parent.name for init in PACKAGE.glob("*/__init__.py")}
    assert folders == set(ROOMS)


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_a_room_imports_only_the_rooms_beneath_it(room):
    reached = {
        str(path.relative_to(PACKAGE.parent)): sorted(
            module
            for module in imported_modules(path)
            if room_of(module) not in (None, room, *ROOMS[room]) and module.startswith("trackset")
        )
        for path in modules_under(PACKAGE / room)
    }
    assert {path: modules for path, modules in reached.items() if modules} == {}


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_each_room_says_what_it_may_import(room):
    """The room's ``__init__`` docstring names the same rooms as :data:`ROOMS`."""
    doc = " ".join((ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text())) or "").split())
    named = set(re.findall(r"``trackset\.(\w+)``", doc.split("May import:")[1])) if "May import:" in doc else None
    assert named == ROOMS[room]


def test_the_bottom_modules_import_nothing_of_trackset_but_each_other():
    for name, allowed in (("domain.py", set()), ("errors.py", {"trackset.domain"})):
        assert {m for m in imported_modules(PACKAGE / name) if m.startswith("trackset")} <= allowed
