"""File formats: the work and dataset layout, intermediates, H5 layouts, statistics files, metadata.csv.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.geometry``
(tests/unit/test_import_structure.py).
"""
