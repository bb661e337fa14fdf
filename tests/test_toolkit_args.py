"""``int_at_least``: the argparse type the benchmarks share for counts (a bad count is argparse's one-line
usage error, not a traceback deep in a run)."""

from __future__ import annotations

import argparse

import pytest

from conceptedit.toolkit import int_at_least


def parser(minimum: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", exit_on_error=False)
    p.add_argument("--n", type=int_at_least(minimum))
    return p


def test_accepts_the_minimum_and_above():
    assert parser(0).parse_args(["--n", "0"]).n == 0
    assert parser(1).parse_args(["--n", "12"]).n == 12


@pytest.mark.parametrize(
    ("minimum", "text", "message"),
    [(1, "0", ">= 1"), (0, "-3", ">= 0"), (1, "nan", "not an integer"), (1, "", "not an integer")],
)
def test_rejects_with_one_line(minimum, text, message):
    with pytest.raises(argparse.ArgumentError, match=message):
        parser(minimum).parse_args(["--n", text])
