"""Evaluation: metrics, the shapes-world probe, batch runs and reports."""
