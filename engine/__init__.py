"""The engine: carries out the wave planner's commands on Prefect and Dask (the executor, task
submission and reports, the run's cluster, how a run ends). It imports the tasks and the core,
never the flows: what it needs of them (the ``profile-memory`` subflow) is handed in."""
