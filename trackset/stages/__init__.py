"""The stages of the pipeline, one module each (FORMATS.md stage order).

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.geometry``, ``trackset.gpu`` (tests/unit/test_import_structure.py).
"""
