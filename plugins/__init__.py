"""In-tree plugins: one module (or small package) per method; each registers itself on import.

The registry imports every module here one by one, so a plugin that fails to import is listed as
broken with its error instead of breaking the others.
"""
