"""Pipelines: loading diffusers pipelines, the built-in shapes model, and pipelines plugins need."""
