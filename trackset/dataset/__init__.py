"""The dataset: manifest, registration, done index, lock, import, retention, statistics, validation.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.geometry``, ``trackset.stages`` (tests/unit/test_import_structure.py).
"""
