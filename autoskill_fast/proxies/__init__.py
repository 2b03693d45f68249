"""Which directions help: the paper's proxy rankings (correlation with verified correctness, steering on a dev set,
a pilot LoRA fine-tune), each with effects and intervals, written as the run's ranking.json."""

from ..lazy import lazy_exports

__all__ = ["RankConfig", "rank"]
__getattr__, __dir__ = lazy_exports(__name__, {"RankConfig": ".job", "rank": ".job"})
