"""Helpers shared by test modules: the CLI run in this process, and a grader whose verdicts a test plants."""

from __future__ import annotations

from typing import Callable

from click.testing import CliRunner


def invoke(*args) -> tuple[int, str]:
    """The CLI in this process: (exit code, its output and any exception that is not an exit)."""
    from autoskill_fast.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    crashed = "" if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
    return result.exit_code, result.output + crashed


def planted_grader(correct: Callable[[int, str, str], bool]) -> type:
    """A stand-in for `grading.Grader` (monkeypatch it in): every gold passes its self-check, and the i-th pair of a
    `grade_many` call is correct when `correct(i, completion, gold)`."""
    from autoskill_fast.evaluation import grading

    class Planted:
        def __init__(self, **_):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_):
            pass

        def grade(self, completion, gold):  # the golds' self-check before generating
            return grading.Verdict(correct=completion == f"\\boxed{{{gold}}}", timed_out=False, extracted=gold)

        def grade_many(self, pairs):
            return [grading.Verdict(correct=correct(i, completion, gold), timed_out=False, extracted=None)
                    for i, (completion, gold) in enumerate(pairs)]

    return Planted
