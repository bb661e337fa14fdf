"""Compatibility alias: the shapes-world probe lives in :mod:`conceptedit.datasets.shapes.probe`.

Kept only for ``benchmarks/shapes_quality.py`` (owned by the shapes-model work) until it imports the
new path; then delete this file and its exception in ``tests/test_import_graph.py``. Nothing else may
import it: the evaluation core imports nothing from the shapes world.
"""

from conceptedit.datasets.shapes.probe import (  # noqa: F401
    Probe,
    ProbeNet,
    evaluate,
    image_kind_warning,
    targets,
    train_probe,
)
