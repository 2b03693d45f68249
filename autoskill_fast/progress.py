"""A progress bar with examples/s and tokens/s; silent with --quiet."""

from __future__ import annotations

import time

from tqdm.auto import tqdm


class Progress:
    def __init__(self, *, disable: bool, initial_examples: int = 0, initial_tokens: int = 0, desc: str = "profile"):
        self.bar = tqdm(desc=desc, unit="ex", initial=initial_examples, disable=disable, dynamic_ncols=True, mininterval=1.0)
        self.tokens = 0
        self.examples = 0
        self.t0 = time.perf_counter()
        self.initial_tokens = initial_tokens

    def update(self, examples: int, tokens: int) -> None:
        self.examples += examples
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.examples / elapsed:.1f} ex/s, {self.tokens / elapsed:.0f} tok/s", refresh=False)
        self.bar.update(examples)

    def close(self) -> None:
        self.bar.close()
