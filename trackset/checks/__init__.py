"""``trackset check-models``: each real model loaded on each GPU and run on one synthetic clip.

A user's first command on a GPU machine. For every GPU stage the settings run with
``backend: real`` it names what is missing (package, weights, GPU), or it runs the model on
a clip made by :func:`~trackset.synthetic.corpus.make_corpus`, with every other stage's
output taken from the clip's ground truth, reads the output back with the FORMATS.md
readers, compares it with the truth, and stores the measured memory peak as the profile a
first run starts from (:mod:`trackset.scheduling.profile_store`).

May import: ``trackset.domain``, ``trackset.errors``, ``trackset.config``, ``trackset.formats``,
``trackset.geometry``, ``trackset.gpu``, ``trackset.stages``, ``trackset.synthetic``,
``trackset.scheduling`` (tests/unit/test_import_structure.py).
"""
