"""Stand-ins for the real models' Python APIs, with their call signatures and return types.

Each module builds fake modules and installs them with ``monkeypatch.setitem(sys.modules,
...)``, so an adapter's lazy ``import`` inside ``load()`` finds them. The fakes compute
analytic results from a small scene the test controls, so the tests can check the adapters'
geometry (pose inversion, window frames, back-projection, mirroring) exactly.
"""
