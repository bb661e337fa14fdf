"""``conceptedit eval``: `run` is the default sub-command (``eval CONFIG`` = ``eval run CONFIG``) and
``compare`` is a real sub-command with its own arguments."""

from __future__ import annotations

from typer.testing import CliRunner

from conceptedit.cli import _attach_subcommands, app
from conceptedit.errors import ConceptEditError

_attach_subcommands()
runner = CliRunner()


def test_eval_config_is_eval_run_config():
    for args in (["eval", "--list"], ["eval", "run", "--list"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and result.stdout.split() == ["shapes-quick"], args
    for args in (["eval", "no-such.yaml"], ["eval", "run", "no-such.yaml"]):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, ConceptEditError) and "no-such.yaml" in str(result.exception)


def test_compare_is_a_sub_command_with_two_run_folders(tmp_path):
    result = runner.invoke(app, ["eval", "compare", str(tmp_path)])
    assert result.exit_code == 2 and "run_b" in result.output.lower()  # a usage error, not a config lookup
    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert isinstance(result.exception, ConceptEditError) and "results.json" in str(result.exception)
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0 and "compare" in result.stdout and "run" in result.stdout
