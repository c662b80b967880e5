"""Camera geometry, query points and hand-pose filters: vectorised numpy, no I/O.

May import: nothing of trackset (tests/unit/test_import_structure.py).
"""
