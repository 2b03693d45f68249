"""Grading final answers with math-verify, each check in a killable worker process under a hard timeout.

A check wraps the gold answer as `\\boxed{gold}` and parses it, parses the completion, and asks math-verify whether
they match (`verify(gold, pred)`). A completion with no box whose last line is GSM8K's "#### N" (how a model trained
on GSM8K solutions answers) is graded as `\\boxed{N}`. It runs in one long-lived worker process (`python -m
autoskill_fast.evaluation.grading`, JSON lines over its stdin and stdout: it imports neither torch nor the caller's
script), which imports math-verify once and caches parsed golds (a problem's n samples share one). math-verify's own timeouts are
turned off (`parse(..., parsing_timeout=None)`, `verify(..., timeout_seconds=None)`): they use SIGALRM, which works
only on a main thread and is reported to hang. Ours is hard: a check that overruns is answered "wrong, timed out", its
worker is killed and a fresh one started, so the next check runs as usual.

Where math-verify 0.9.0 and a careful human grader disagree (tests/test_evaluation_grading.py asserts each one, so a
release that changes any of them fails the test and this list is updated):

- Two different `\\boxed{}` answers ("\\boxed{3} ... on reflection \\boxed{5}") parse as the set {3, 5}, which equals
  neither; a human takes the last box. Two equal boxes are fine.
- A unit word inside the box, `\\boxed{18 dollars}`, parses as the product 18*a*do*l*l*r*s (and takes ~0.5 s);
  `\\boxed{18\\text{ dollars}}`, `\\boxed{\\$18}` and an unboxed "18 dollars" are fine.
- An escaped dollar outside math mode ("the answer is **\\$18**") extracts nothing.
- Outside a box, "1,8" reads as the decimal 1.8 (so a listed answer "1,8" does not equal the set {1, 8}); inside a box
  it is the set {1, 8}. Thousands separators ("1,234", "1,450,000") are read as one number either way.
- A trailing period inside the box, `\\boxed{7.}`, leaves an unparsed string that equals nothing.
- Without a box, the last number in the text wins: "the answer is **73**. Check: 73 - 5 = 68" is graded as 68, and a
  hedge "either 4 or 5" as 5.
- math-verify does not know GSM8K's "#### N" final line, and currency dollar signs in plain text can pair up as math
  delimiters: bare, the reference solution "... total: $4.00 + $2.00 = $<<4+2=6.00>>6.00\n#### 6" is read as 4.00 (4 of
  the 1,319 GSM8K test solutions fail against their own answers this way). We grade a box-less completion whose last
  line is "#### N" as \\boxed{N}, which fixes these. N is that line's text without a trailing period, or its number
  alone when a word follows it ("#### 18 dollars", "#### $18 per week": 18), as the gold of such a line is read.
- A bare gold "(1,2)" parses to nothing; wrapped in `\\boxed{}`, as we do, it is the interval (1, 2), which a predicted
  "(1, 2)" equals. A gold that math-verify cannot read ("7.", "???": it keeps only the text, which only the same text
  equals) raises an error naming it, rather than failing samples that are right; a gold of words ("north") is kept.
- A completion cut at --max-new-tokens inside its last box ("\\boxed{3} ... \\boxed{5") is graded on the earlier,
  closed box; samples.jsonl marks it `finished: false`.

What we do about them: nothing beyond wrapping the gold, so that our numbers stay comparable with other math-verify
evaluations. Prompts should ask for one final answer, in `\\boxed{}`, as a number without units; `Verdict.extracted`
records what math-verify compared (a set "{3, 5}" or a product of letters is the signature of the first two), so an
audit of the samples can find them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import AutoskillError

DEFAULT_TIMEOUT_S = 5.0
_STARTUP_TIMEOUT_S = 120.0  # starting a worker imports sympy and math-verify: seconds, more on a loaded machine
_INSTALL = 'pip install "math-verify==0.9.0" "latex2sympy2_extended==1.11.0" "antlr4-python3-runtime==4.13.2"'

Check = Callable[[str, str], "tuple[bool, str | None]"]

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_FINAL = re.compile(r"####\s*([^\n]+?)\s*$")
_WORDS = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
# "$18", "18 dollars", "$18 per week": a number, then words only (no digit, no math word: "2 pi", "10 and 20" stay)
_NUMBER_THEN_WORDS = re.compile(r"\\?\$?\s*(-?(?:\d[\d,]*)?\.?\d+)"
                                r"(?:\s+(?!(?:pi|sqrt|times|cdot|and|or|to|plus|minus|over)\b)"
                                r"[A-Za-z]{2,}[A-Za-z\s'-]*)?")


@dataclass(frozen=True)
class Verdict:
    """How one completion was graded against its gold answer."""

    correct: bool
    """math-verify found the completion's answer equal to the gold (never true for a check that timed out)."""
    timed_out: bool
    """The check did not finish within the grader's timeout (or its worker died), so it was counted as wrong."""
    extracted: str | None
    """What math-verify parsed from the completion and compared, as a string; None if nothing was parsed."""


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, or None.

    Nested braces are matched (escaped `\\{`, `\\}` do not count); `\\boxed 5`, without braces, gives "5" (up to the
    next space, `$` or brace, without a trailing period or comma). A last box left open (a truncated completion) gives
    None: an earlier box is not the final answer.
    """
    last = None
    for last in _BOX_COMMAND.finditer(text):
        pass
    if last is None:
        return None
    body = text[last.end():].lstrip()
    if not body.startswith("{"):  # "\boxed 5" (the pattern has already refused "\boxedx", another command)
        token = re.match(r"[^\s${}]*", body).group(0).rstrip(".,")
        return token or None
    depth, i = 0, 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return body[1:i].strip()
        i += 1
    return None


def final_line_answer(text: str) -> str:
    """The answer of a GSM8K "#### answer" line as it is graded: without a trailing period, and a number with a dollar
    sign before it or words after it ("$18", "18 dollars", "$18 per week") as the number alone."""
    text = text.strip().removesuffix(".").rstrip()
    match = _NUMBER_THEN_WORDS.fullmatch(text)
    return match.group(1) if match else text


class _GoldUnparseable(Exception):
    pass


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> list[Any]:
    from math_verify import parse

    parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    if all(isinstance(item, str) for item in parsed) and not _WORDS.fullmatch(gold.strip()):
        # nothing, or only the text back: then only the same text equals it, which is right for a word ("north")
        # and wrong for a number it cannot read ("7.": a right "7" would not equal it)
        raise _GoldUnparseable(gold)
    return parsed


def _math_verify_check(completion: str, gold: str) -> tuple[bool, str | None]:
    """(correct, extracted) by math-verify in this process, with no timeout at all: the worker's check."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    pred = parse(completion, parsing_timeout=None)
    extracted = str(pred[0]) if pred else None
    return bool(verify(gold_parsed, pred, timeout_seconds=None)), extracted


def _load_math_verify() -> Check:
    import math_verify  # noqa: F401

    # math-verify warns once that its (SIGALRM) timeouts are off: they are, on purpose; ours is the hard one.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _math_verify_check("\\boxed{1}", "1")  # the first parse builds the LaTeX parser (~0.1 s): not inside a check
    return _math_verify_check


def _serve(check_spec: str | None) -> None:
    """The worker's loop: a JSON line [completion, gold] in, ["ok", correct, extracted] out, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then closes this worker

    def send(*reply: Any) -> None:
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    try:
        check = _import_check(check_spec) if check_spec else _load_math_verify()
    except Exception as error:  # a missing package, or one that fails to import (e.g. an antlr4 mismatch)
        send("missing", f"{type(error).__name__}: {error}")
        return
    send("ready", None)
    for line in sys.stdin:
        completion, gold = json.loads(line)
        try:
            correct, extracted = check(completion, gold)
            send("ok", bool(correct), extracted)
        except _GoldUnparseable:
            send("bad_gold", None, None)
        except Exception:
            send("error", traceback.format_exc(), None)


def _import_check(spec: str) -> Check:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _as_boxed(completion: str) -> str:
    """A completion ending in GSM8K's "#### N" (and holding no box) as one whose answer is \\boxed{N}."""
    if _BOX_COMMAND.search(completion):
        return completion
    match = _GSM8K_FINAL.search(completion)
    if match is None:
        return completion
    return f"{completion[:match.start()]}\\boxed{{{final_line_answer(match.group(1))}}}"


class Grader:
    """math-verify in one killable worker process, each check bounded by `timeout` seconds.

    Use as a context manager (`with Grader() as grader: grader.grade(text, gold)`); `close()` ends the worker.
    `_check`, a module-level `(completion, gold) -> (correct, extracted)` that the worker imports and runs instead of
    math-verify (then not imported), is for tests: e.g. one that hangs on purpose.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, *, _check: Check | None = None):
        if not timeout > 0:
            raise ValueError(f"Grader: timeout must be positive, got {timeout}")
        if importlib.util.find_spec("math_verify") is None:
            raise AutoskillError(f"grading needs math-verify, which is not installed; install it with: {_INSTALL}")
        self.timeout = float(timeout)
        self._check = None if _check is None else f"{_check.__module__}:{_check.__qualname__}"
        self._process: subprocess.Popen | None = None
        self._starting = False  # started, its "ready" not read yet

    def __enter__(self) -> Grader:
        self._start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def grade(self, completion: str, gold: str) -> Verdict:
        """Grade one completion against its gold answer (the bare answer, e.g. "72" or "\\frac{3}{4}")."""
        request = json.dumps([_as_boxed(completion), gold]) + "\n"
        try:
            process = self._ready()
            process.stdin.write(request.encode())
            process.stdin.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):  # the worker died between checks: a fresh one
            self._restart()
            process = self._ready()
            process.stdin.write(request.encode())
            process.stdin.flush()
        reply = self._read(process, self.timeout)
        if reply is None:  # overran its timeout (killed now), or died during the check (e.g. for memory)
            self._restart()
            return Verdict(correct=False, timed_out=True, extracted=None)
        status, value, extracted = reply
        if status == "bad_gold":
            raise AutoskillError(f"gold answer {gold!r}: math-verify reads no answer from it, only its text, "
                                 "which a right answer written another way would not equal; fix the problem's answer "
                                 "(a number or a LaTeX expression, e.g. 72 or \\frac{3}{4})")
        if status == "error":
            raise RuntimeError(f"the grading check failed in the worker:\n{value}")
        return Verdict(correct=value, timed_out=False, extracted=extracted)

    @staticmethod
    def _read(process: subprocess.Popen, timeout: float) -> list | None:
        """The worker's next reply, or None when it does not come within `timeout` seconds or the worker died."""
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        if not ready:
            return None
        line = process.stdout.readline()  # the worker writes whole lines, each in one flush
        return json.loads(line) if line else None

    def grade_many(self, pairs: Iterable[tuple[str, str]]) -> list[Verdict]:
        """Grade (completion, gold) pairs in order, one after the other in the same worker."""
        return [self.grade(completion, gold) for completion, gold in pairs]

    def close(self) -> None:
        """End the worker. It holds nothing to save, so it is killed rather than waited for."""
        if self._process is not None:
            self._kill()

    def _start(self) -> None:
        if self._process is not None:
            return
        # The worker sees this process's import path (tests' modules, a monkeypatched path) and nothing else of it.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        command = [sys.executable, "-m", "autoskill_fast.evaluation.grading"] + ([self._check] if self._check else [])
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._starting = True

    def _ready(self) -> subprocess.Popen:
        """A worker that is ready for a check (started, and its start confirmed)."""
        self._start()
        process = self._process
        if self._starting:
            reply = self._read(process, _STARTUP_TIMEOUT_S)
            if reply is None:
                code = process.poll()
                self._kill()
                if code is not None:
                    raise AutoskillError(f"the math-verify grading worker exited while starting (exit code {code}); "
                                         "check that `python -c 'import math_verify'` works")
                raise AutoskillError(f"the math-verify grading worker did not start within {_STARTUP_TIMEOUT_S:.0f} "
                                     "s; check that `python -c 'import math_verify'` works")
            status, message = reply
            if status == "missing":
                self._kill()
                raise AutoskillError(f"grading needs math-verify, which fails to import ({message}); install it "
                                     f"with: {_INSTALL}")
            self._starting = False
        return process

    def _kill(self) -> None:
        process = self._process
        self._process, self._starting = None, False
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:  # the worker is gone: its pipe may be broken
                pass

    def _restart(self) -> None:
        """Replace a worker that overran a check (it may never return) or died, not waiting for the new one to start."""
        self._kill()
        self._start()


if __name__ == "__main__":
    _serve(sys.argv[1] if len(sys.argv) > 1 else None)
