"""Grading: math-verify against a careful human grader on a table of answer formats (its known disagreements pinned, so
a release that changes one fails here), the killable worker's hard timeout, and extract_boxed."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from autoskill_fast.errors import AutoskillError
from autoskill_fast.evaluation import grading
from autoskill_fast.evaluation.grading import Grader, Verdict, extract_boxed

GSM8K_SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")

# The end of a GSM8K test reference solution (its plain-text dollar signs pair up as math delimiters).
GSM8K_DOLLARS = ('Then add the "more than a week overdue" fee to the answer from the previous step to find the total: '
                 "$4.00 + $2.00 = $<<4+2=6.00>>6.00\n#### 6")

# (case, gold, completion, what a careful human grader says): math-verify agrees on each.
AGREED = [
    ("thousands comma in the box", "1234", r"The answer is \boxed{1,234}.", True),
    ("thousands comma, no box", "1234", "So the total is 1,234.", True),
    ("GSM8K gold with a comma", "1,600", r"\boxed{1600}", True),
    ("GSM8K gold with two commas", "1,450,000", r"\boxed{1450000}", True),
    ("fraction for a decimal gold", "0.75", r"\boxed{3/4}", True),
    ("decimal for a fraction gold", "3/4", r"\boxed{0.75}", True),
    ("\\frac for a decimal gold", "0.75", r"\boxed{\frac{3}{4}}", True),
    ("trailing zero", "0.5", r"\boxed{0.50}", True),
    ("escaped dollar in the box", "18", r"\boxed{\$18}", True),
    ("\\text unit in the box", "18", r"\boxed{18\text{ dollars}}", True),
    ("unit word, no box", "18", "She pays 18 dollars.", True),
    ("dollar sign, no box", "18", "It costs $18.", True),
    ("percent sign", "72", r"\boxed{72\%}", True),
    ("markdown bold, no box", "73", "So the answer is **73**.", True),
    ("two equal boxes", "5", r"So \boxed{5}. Checking again: \boxed{5}", True),
    ("two boxes, the last wrong", "5", r"First \boxed{5}; on reflection \boxed{3}.", False),
    ("box without braces", "72", r"The answer is $\boxed 72$.", True),
    ("GSM8K-style worked solution", "72", GSM8K_SOLUTION, True),
    ("GSM8K-style, wrong final line", "72", GSM8K_SOLUTION.replace("#### 72", "#### 48"), False),
    ("wrong answer", "72", r"\boxed{71}", False),
    ("wrong sign", "72", r"\boxed{-72}", False),
    ("close but not equal", "2", r"\boxed{1.9999}", False),
    ("no answer at all", "10", "I am not sure how to solve this.", False),
    ("empty completion", "10", "", False),
    ("bare pair gold (we wrap it in a box)", "(1,2)", r"\boxed{(1, 2)}", True),
    # Our GSM8K rule (a final "#### N" with no box is graded as \boxed{N}) makes these agree; bare math-verify reads
    # the dollar-laden one as 4.00.
    ("GSM8K final line after dollar signs", "6", GSM8K_DOLLARS, True),
    ("GSM8K final line with a comma", "1600", "so 1,000 + 600 = 1,600\n#### 1,600", True),
    # ... and these: math-verify reads "#### 18 dollars" boxed whole as a product of letters, "7." as text.
    ("GSM8K final line with a unit word", "18", "so 9 * 2 = 18\n#### 18 dollars", True),
    ("GSM8K final line with a dollar sign and words", "18", "so 9 * 2 = 18\n#### $18 per week", True),
    ("GSM8K final line with a period", "7", "so 3 + 4 = 7\n#### 7.", True),
    ("GSM8K final line with a wrong number and a unit word", "18", "so\n#### 17 dollars", False),
    ("GSM8K final line: a number times pi is not the number", "2", "so\n#### 2 pi", False),
    ("GSM8K final line: two numbers are not the first", "10", "so\n#### 10 and 20", False),
    ("GSM8K final line: a duration is not its hours", "3", "so\n#### 3 hours and 20 minutes", False),
]

# (case, gold, completion, what a careful human grader says, what math-verify extracts): math-verify disagrees on
# each. grading.py's docstring lists them; update it when one of these starts to agree.
DISAGREED = [
    ("two different boxes, the last right", "5", r"First \boxed{3}; on reflection \boxed{5}.", True, "{3, 5}"),
    ("unit word inside the box", "18", r"\boxed{18 dollars}", True, "18*a*do*l*l*r*s"),
    ("escaped dollar outside math", "18", r"The answer is **\$18**.", True, None),
    ("comma list read as a decimal", "1, 8", "The solutions are 1,8.", True, "1.80000000000000"),
    ("trailing period in the box", "7", r"\boxed{7.}", True, "7."),
    ("answer stated, then more arithmetic", "73", "The answer is **73**. Check: 73 - 5 = 68.", True, "68"),
    ("hedged answer, no box", "5", "It is either 4 or 5.", False, "5"),
]


@pytest.fixture(scope="module")
def grader():
    with Grader() as g:
        yield g


@pytest.mark.parametrize("gold, completion, human", [row[1:] for row in AGREED], ids=[row[0] for row in AGREED])
def test_math_verify_agrees_with_a_careful_human(grader, gold, completion, human):
    verdict = grader.grade(completion, gold)
    assert verdict.correct is human and not verdict.timed_out, verdict


@pytest.mark.parametrize("gold, completion, human, extracted", [row[1:] for row in DISAGREED],
                         ids=[row[0] for row in DISAGREED])
def test_known_disagreements_with_a_careful_human_still_hold(grader, gold, completion, human, extracted):
    verdict = grader.grade(completion, gold)
    assert verdict.correct is (not human) and not verdict.timed_out, verdict
    assert verdict.extracted == extracted


def test_every_known_disagreement_is_documented_in_the_module():
    doc = grading.__doc__
    for needle in ("{3, 5}", "18 dollars", "\\$18", "1,8", "\\boxed{7.}", "68", "either 4 or 5", "#### 6", '"(1,2)"'):
        assert needle in doc, needle


def test_grade_many_is_one_worker_and_fast(grader):
    rows = [(completion, gold) for _, gold, completion, _ in AGREED]
    pairs = (rows * 2)[:50]
    grader.grade("\\boxed{1}", "1")
    worker = grader._process.pid
    t0 = time.perf_counter()
    verdicts = grader.grade_many(pairs)
    elapsed = time.perf_counter() - t0
    assert [v.correct for v in verdicts] == [human for _, _, _, human in (AGREED * 2)[:50]]
    assert grader._process.pid == worker  # no process per check
    assert elapsed < 10.0  # ~0.1 s here; a process per check would take about a minute


def test_an_unparseable_gold_names_itself_and_the_grader_goes_on(grader):
    for gold in ("", "7.", "???", "3 %%"):  # math-verify gives back the text alone for the last three
        with pytest.raises(AutoskillError, match=rf"gold answer {re.escape(repr(gold))}: math-verify reads no answer"):
            grader.grade(rf"\boxed{{{gold}}}", gold)
    for word in ("north", "true"):  # the text alone too, but a word: the same word in a box equals it
        assert grader.grade(rf"\boxed{{{word}}}", word).correct and not grader.grade(r"\boxed{south}", word).correct
    assert grader.grade(r"\boxed{5}", "5") == Verdict(correct=True, timed_out=False, extracted="5")


# A check the worker runs instead of math-verify (module level: the worker process imports it from here). Without
# math-verify to import, its worker starts in a fraction of a second.
HANG, DIE, RAISE = "<hang>", "<die>", "<raise>"


def _misbehave_on_marker(completion: str, gold: str) -> tuple[bool, str]:
    if completion == HANG:
        time.sleep(3600)
    if completion == DIE:
        os._exit(3)
    if completion == RAISE:
        raise ValueError("a planted failure")
    return completion == gold, completion


TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def hooked():
    with Grader(timeout=TIMEOUT_S, _check=_misbehave_on_marker) as g:
        yield g


def test_a_hanging_check_is_killed_within_its_timeout_and_the_grader_goes_on(hooked):
    assert hooked.grade("5", "5").correct  # the worker is up: its start is not timed below
    worker = hooked._process
    t0 = time.perf_counter()
    verdict = hooked.grade(HANG, "5")
    elapsed = time.perf_counter() - t0
    assert verdict == Verdict(correct=False, timed_out=True, extracted=None)
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.0  # the check would sleep an hour
    assert worker.poll() == -signal.SIGKILL
    assert hooked.grade("5", "5") == Verdict(correct=True, timed_out=False, extracted="5")
    assert hooked.grade("4", "5") == Verdict(correct=False, timed_out=False, extracted="4")


def test_a_worker_that_dies_mid_check_counts_it_wrong_and_is_replaced(hooked):
    assert hooked.grade("5", "5").correct
    assert hooked.grade(DIE, "5") == Verdict(correct=False, timed_out=True, extracted=None)
    assert hooked.grade("5", "5").correct


def test_a_failing_check_raises_with_the_worker_traceback(hooked):
    with pytest.raises(RuntimeError, match="a planted failure"):
        hooked.grade(RAISE, "5")
    assert hooked.grade("5", "5").correct


def test_a_bad_timeout_is_refused():
    with pytest.raises(ValueError, match="timeout must be positive"):
        Grader(timeout=0)


def test_missing_math_verify_is_one_line_saying_what_to_install(monkeypatch):
    real = grading.importlib.util.find_spec
    monkeypatch.setattr(grading.importlib.util, "find_spec", lambda name, *a: None if name == "math_verify"
                        else real(name, *a))
    with pytest.raises(AutoskillError, match=r"not installed; install it with: pip install \"math-verify==") as e:
        Grader()
    assert "\n" not in str(e.value)


def test_math_verify_that_fails_to_import_in_the_worker_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "math_verify").mkdir()
    (tmp_path / "math_verify" / "__init__.py").write_text("raise ImportError('antlr4 version mismatch (planted)')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned worker inherits sys.path
    with Grader() as g, pytest.raises(AutoskillError, match=r"fails to import \(ImportError: antlr4 version "
                                                            r"mismatch \(planted\)\); install it with: pip install"):
        g.grade(r"\boxed{5}", "5")


@pytest.mark.parametrize("text, boxed", [
    (r"so \boxed{72}.", "72"),
    (r"\boxed{3} then \boxed{5}", "5"),
    (r"\boxed{\frac{3}{4}}", r"\frac{3}{4}"),
    (r"\boxed{\left\{1, 2\right\}}", r"\left\{1, 2\right\}"),  # escaped braces do not close the box
    (r"\boxed{ 18\text{ dollars} }", r"18\text{ dollars}"),
    (r"$\boxed 72$.", "72"),
    (r"\boxed 5.", "5"),
    (r"\fbox{9}", "9"),
    (r"\boxed {4}", "4"),
    (r"\boxed{}", ""),
    (r"\boxed{5} and then \boxed{1", None),  # the last box is open (a truncated completion): no final answer
    (r"\boxed5", "5"),  # as in LaTeX: a digit ends the command name
    (r"\boxed{a} then \boxedx", "a"),  # \boxedx is another command
    (r"\boxedx", None),
    ("the end: \\boxed", None),
    ("#### 72", None),
    ("", None),
])
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed
