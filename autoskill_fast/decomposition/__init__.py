"""Streaming statistics (exact packed, Frequent Directions), top-k eigenpairs and projection, and SkillPCA: the
model-agnostic part of autoskill-fast, what a tool embeds."""

from ..lazy import lazy_exports

__all__ = ["FrequentDirections", "PrincipalComponents", "SkillPCA", "SketchedCovariance", "Statistics",
           "StreamingCovariance", "canonical_signs", "fit_components", "load_statistics", "project", "topk_eigh"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "FrequentDirections": ".frequent_directions",
    "PrincipalComponents": ".components",
    "SkillPCA": ".pca",
    "fit_components": ".components",
    "SketchedCovariance": ".statistics",
    "Statistics": ".statistics",
    "StreamingCovariance": ".statistics",
    "load_statistics": ".statistics",
    "canonical_signs": ".linalg",
    "project": ".linalg",
    "topk_eigh": ".linalg",
})
