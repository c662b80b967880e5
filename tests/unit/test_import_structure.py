"""The layering rules of DECISIONS.md, checked on the source: what may import what.

- ``trackset/`` is the pure core: it never imports Prefect, ``tasks`` or ``flows``.
- ``trackset/stages/`` never imports ``trackset/synthetic/`` (backends are named by string
  in the stage table).
- ``trackset/domain.py`` is the bottom layer: it imports nothing of trackset.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "trackset"


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
    assert offenders(PACKAGE, ("prefect", "prefect_dask", "tasks", "flows")) == {}


def test_stages_never_import_the_synthetic_backends():
    assert offenders(PACKAGE / "stages", ("trackset.synthetic",)) == {}


def test_the_domain_types_import_nothing_of_trackset():
    assert {m for m in imported_modules(PACKAGE / "domain.py") if m.startswith("trackset")} == set()


@pytest.mark.parametrize("module", ["trackset.stages.registry", "trackset.worker_cache", "trackset.registration"])
def test_importing_the_core_loads_neither_prefect_nor_a_synthetic_backend(module):
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'tasks', 'flows') "
        "or m.startswith('trackset.synthetic')); print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
