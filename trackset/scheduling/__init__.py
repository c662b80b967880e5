"""Scheduling decisions, without Prefect or Dask: the wave planner and the commands it gives,
GPU packing, what a task's report means, the progress count, work lists and stored memory profiles.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.gpu``, ``trackset.stages``, ``trackset.cluster``
(tests/unit/test_import_structure.py).
"""
