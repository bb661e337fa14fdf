"""``conceptedit edit-image``: refusals that come before any model loads (a ConceptEditError: main() prints
one "error:" line, exit 2)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from conceptedit.cli import _attach_subcommands, app
from conceptedit.errors import ConceptEditError

_attach_subcommands()
runner = CliRunner()


def _error(*args: str) -> str:
    r = runner.invoke(app, ["edit-image", *args])
    assert isinstance(r.exception, ConceptEditError), r.output
    return str(r.exception)


def test_existing_output_and_non_edit_plugin_and_unreadable_image_are_errors(tmp_path):
    src = tmp_path / "src.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src)
    (tmp_path / "out.png").write_bytes(b"keep me")
    msg = _error(str(src), "-p", "a red circle", "-e", "circle -> square", "-o", str(tmp_path / "out.png"))
    assert "exists" in msg and (tmp_path / "out.png").read_bytes() == b"keep me"
    assert "not an image edit" in _error(
        str(src), "-p", "x", "-e", "a -> b", "-o", str(tmp_path / "o2"), "--plugin", "uce"
    )
    (tmp_path / "bad.png").write_text("not an image")
    assert "cannot read image" in _error(
        str(tmp_path / "bad.png"), "-p", "x", "-e", "a -> b", "-o", str(tmp_path / "o3")
    )
