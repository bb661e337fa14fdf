"""Every benchmark script imports and parses its arguments: the figures in the docs cite them by command line,
and one that no longer starts (a renamed import, such as ``vae_texture_finetune`` using ``shapes_quality``'s
``vae_style_bound``) would go unnoticed until someone re-measures."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

# the scripts (a helper module such as geom_erasing_readout has no entry point)
BENCHMARKS = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py") if "__main__" in p.read_text()
)


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_the_script_starts_and_prints_its_usage(script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.setattr(sys, "path", [str(script.parent), *sys.path])  # as `python benchmarks/x.py` runs it
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code in (0, None) and "usage" in out.getvalue().lower(), out.getvalue()[-500:]


def test_blindspots_features_accepts_its_default_extractors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default extractor list holds a spec with a comma (clip-all@2,3); splitting the option on commas
    once turned the script's own default into an error. No --sae, no probe: it checks the options and loads
    the model only."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "blindspots_features.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--no-probe", "--out", str(tmp_path)])
    monkeypatch.setattr(sys, "path", [str(script.parent), *sys.path])
    with contextlib.redirect_stdout(io.StringIO()):
        runpy.run_path(str(script), run_name="__main__")
    assert (tmp_path / "features.json").is_file()
