"""Synthetic scenes, videos and models: the pipeline end to end without GPUs or weights.

- :mod:`~trackset.synthetic.scene`: a procedural scene with analytic ground truth.
- :mod:`~trackset.synthetic.corpus`: real encoded videos of such scenes, truth beside them.
- :mod:`~trackset.synthetic.backends`: ViPE, TAPIP3D and WiLoR stand-ins reading that truth.
- :mod:`~trackset.synthetic.cost`: the memory and time those stand-ins pretend to spend.

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.geometry``, ``trackset.gpu`` (tests/unit/test_import_structure.py).
"""
