"""autoskill-fast: model-native skills, fast.

    from autoskill_fast import profile, ProfileConfig, CorpusConfig, SkillBasis
    basis = profile(ProfileConfig(corpus=CorpusConfig("traces.jsonl", text_field="trace"), out="runs/traces"))
    scores = basis.project(features)          # [N, k] centered projections

The stages, each in its own subpackage and each importing only the ones before it: `data` (corpus -> batches),
`capture` (model, hooks -> pooled features), `decomposition` (streaming statistics -> SkillPCA), `basis`, `run` (the
run folder), `jobs` (profile, fit, merge, project), `analysis` (select, inspect, compare) and `steering`. Names are
imported on first use: reading a basis imports neither Triton nor transformers.
"""

from .lazy import lazy_exports

_EXPORTS = {
    "AutoskillError": ".errors",
    "BatchingConfig": ".config",
    "CorpusConfig": ".config",
    "ModelConfig": ".config",
    "PoolingConfig": ".config",
    "ProfileConfig": ".config",
    "ProjectConfig": ".config",
    "SkillPCA": ".decomposition.pca",
    "PrincipalComponents": ".decomposition.pca",
    "SketchedCovariance": ".decomposition.statistics",
    "StreamingCovariance": ".decomposition.statistics",
    "FeatureLayout": ".capture.layout",
    "LoadedModel": ".capture.models",
    "load_model": ".capture.models",
    "PooledFeatures": ".capture.features",
    "pooled_features": ".capture.features",
    "SkillBasis": ".basis",
    "RunFolder": ".run.folder",
    "Scores": ".run.scores",
    "load_run": ".run.reading",
    "Profiler": ".jobs.profiling",
    "profile": ".jobs.profiling",
    "fit": ".jobs.refit",
    "merge": ".jobs.merging",
    "project": ".jobs.projection",
    "CompareConfig": ".analysis.comparison",
    "compare": ".analysis.comparison",
    "InspectConfig": ".analysis.inspection",
    "inspect": ".analysis.inspection",
    "SelectConfig": ".analysis.selection",
    "select": ".analysis.selection",
    "SteerConfig": ".steering.export",
    "export_steering": ".steering.export",
    "SteeringVector": ".steering.vector",
    "steer": ".steering.hooks",
    "bake": ".steering.baking",
    "export_llamacpp": ".steering.llamacpp",
    "EvalConfig": ".evaluation.job",
    "ProblemsConfig": ".evaluation.problems",
    "GenerationConfig": ".evaluation.generation",
    "evaluate": ".evaluation.job",
    "RankConfig": ".proxies.job",
    "rank": ".proxies.job",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
