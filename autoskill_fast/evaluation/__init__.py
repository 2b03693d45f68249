"""Evaluation: problems with verified answers, generation (transformers or vLLM), math-verify grading in a killable
worker, Pass@k with intervals over problems (the bootstrap; count-based or score intervals where it cannot see; joint
ones for many effects at once), and the held-out negative log-likelihood of gold solutions."""

from ..lazy import lazy_exports

__all__ = ["EvalConfig", "Estimate", "Grader", "evaluate", "mean_interval", "paired_mean_difference",
           "paired_pass_at_k_difference", "pass_at_k", "pass_at_k_interval", "simultaneous_band",
           "simultaneous_mean_intervals"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "Estimate": ".passk",
    "pass_at_k": ".passk",
    "pass_at_k_interval": ".passk",
    "paired_pass_at_k_difference": ".passk",
    "mean_interval": ".passk",
    "paired_mean_difference": ".passk",
    "simultaneous_band": ".passk",
    "simultaneous_mean_intervals": ".passk",
    "Grader": ".grading",
    "EvalConfig": ".job",
    "evaluate": ".job",
})
