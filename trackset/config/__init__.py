"""Settings: the pydantic models, where their values come from, and per-run overrides.

May import: ``trackset.domain``, ``trackset.errors`` (tests/unit/test_import_structure.py).
"""
