"""autoskill-fast: model-native skills, fast.

    from autoskill_fast import profile, ProfileConfig, CorpusConfig, SkillBasis
    basis = profile(ProfileConfig(corpus=CorpusConfig("traces.jsonl", text_field="trace"), out="runs/traces"))
    scores = basis.project(features)          # [N, k] centered projections
"""

from .basis import FeatureLayout, SkillBasis
from .compare import CompareConfig, compare
from .config import CorpusConfig, ModelConfig, PoolingConfig, ProfileConfig
from .errors import AutoskillError
from .fitting import fit, fit_basis, merge
from .models import load_model
from .profile import profile, project
from .report import InspectConfig, inspect
from .scores import Scores
from .select import SelectConfig, select
from .stats import SketchedCovariance, StreamingCovariance
from .steering import SteerConfig, SteeringVector, bake, export_llamacpp, export_steering, steer

__all__ = [
    "AutoskillError",
    "CompareConfig",
    "InspectConfig",
    "SelectConfig",
    "compare",
    "inspect",
    "select",
    "CorpusConfig",
    "FeatureLayout",
    "ModelConfig",
    "PoolingConfig",
    "ProfileConfig",
    "Scores",
    "SketchedCovariance",
    "SteerConfig",
    "SteeringVector",
    "bake",
    "export_llamacpp",
    "export_steering",
    "steer",
    "SkillBasis",
    "StreamingCovariance",
    "fit",
    "fit_basis",
    "load_model",
    "merge",
    "profile",
    "project",
]
