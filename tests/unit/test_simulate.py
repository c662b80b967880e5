"""bench/simulate.py runs the real wave planner where neither Prefect nor Dask can be imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKED = """
import importlib.abc, sys

class NoEngine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prefect", "prefect_dask", "dask", "distributed"):
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, NoEngine())
sys.path.insert(0, "bench")
import simulate

barrier = simulate.simulate(300, 4, 300)
waves = simulate.simulate(300, 4, 60)
print(json.dumps({"barrier": {**barrier.row(), "landed": barrier.landed},
                  "waves": {**waves.row(), "landed": waves.landed},
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "dask", "distributed"))}))
"""


def test_the_planner_simulates_a_build_without_prefect_or_dask():
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + BLOCKED], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["loaded"] == []
    barrier, waves = result["barrier"], result["waves"]
    assert barrier["landed"] == waves["landed"] == 300  # every video got its H5 file
    # Waves land the first H5 file within two waves' worth of time; the barrier at the very end.
    assert waves["first_h5_h"] < 2 * waves["wall_h"] / 5 < barrier["first_h5_h"]
    assert waves["peak_tb"] < barrier["peak_tb"]  # a few waves of intermediates, not the corpus
    assert 0 < waves["idle"] < 1 and 0 < barrier["idle"] < 1
