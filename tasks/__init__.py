"""Thin Prefect tasks over the pure logic in ``trackset``."""
