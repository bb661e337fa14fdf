"""``conceptedit.datasets``: data generators — today the procedural shapes world (``datasets.shapes``:
vocabulary, rendering, captions) the built-in model is trained on. Prompt-set files and their reader
are in ``conceptedit.eval.prompts``."""
