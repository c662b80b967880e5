"""The engine: runs a build's stages on Prefect and Dask (submission, stage runs, the run's cluster)."""
