"""Prompt sets (CSV: prompt, evaluation_seed, case_number) and data generators (the shapes world)."""
