"""Scheduling decisions: GPU packing, work lists and stored memory profiles.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.gpu``, ``trackset.stages``, ``trackset.cluster``
(tests/unit/test_import_structure.py).
"""
