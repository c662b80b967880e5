"""The ``>>>`` examples of ``trackset.flows``, ``trackset.engine`` and ``trackset.tasks``.

pytest's ``--doctest-modules`` collects ``trackset/`` by path; these three live in the
repository's ``flows/``, ``engine/`` and ``tasks/`` folders and are imported under the
``trackset`` name, so their examples are run here, module by module, by that name.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import trackset.engine
import trackset.flows
import trackset.tasks

MODULES = sorted(
    info.name
    for package in (trackset.flows, trackset.engine, trackset.tasks)
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + ".")
)


def test_the_three_packages_have_modules():
    assert {"trackset.flows.cli", "trackset.engine.executor", "trackset.tasks.stage_tasks"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_examples(name: str) -> None:
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert failed == 0, f"{failed} example(s) of {name} failed (run: python -m doctest -v on it)"
