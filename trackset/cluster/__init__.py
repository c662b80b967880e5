"""The Dask cluster's pure parts: worker specs, probes, preloads, the worker's model cache, SLURM kwargs,
TLS certificates and the secrets a user makes once (``security``).

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.gpu``, ``trackset.stages`` (tests/unit/test_import_structure.py).
"""
