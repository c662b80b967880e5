"""What a run reports: the run report, per-clip reports and pictures.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``
(tests/unit/test_import_structure.py).
"""
