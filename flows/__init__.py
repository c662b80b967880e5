"""Prefect flows of trackset and the ``trackset`` command line."""
