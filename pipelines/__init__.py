"""``conceptedit.pipelines``: the built-in shapes model (its shipped files, training and probe) and,
as they land, the pipelines plugins need (e.g. DDIM inversion for image edits). Loading any model is
``conceptedit.loading.load_pipeline``; it finds built-in models by name."""
