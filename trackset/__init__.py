"""trackset: raw human videos to an HDF5 dataset of 3D point tracks, camera and hand poses.

This package is the pure logic (stages, geometry, H5 layout, statistics, settings, GPU
inventory and sizing); it never imports Prefect. ``tasks/`` wraps it, ``flows/`` runs it.
"""

__version__ = "0.1.0"
