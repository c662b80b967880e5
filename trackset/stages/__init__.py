"""The stages of the pipeline, one module each (FORMATS.md stage order)."""
