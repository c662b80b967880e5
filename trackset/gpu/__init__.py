"""GPUs: inventory (NVML or fake), the fake device, memory probes, allocators and sizing.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``
(tests/unit/test_import_structure.py).
"""
