"""The `steer` job: a profile run's basis -> a steering vector -> a baked checkpoint, a llama.cpp GGUF, or the vector.

Output folder by format (each also holds the vector and the resolved config, `steer.json`):
- `hf`: a model folder that transformers and vLLM load as is; the vector and records go to its `steering/`.
- `llamacpp`: `control_vector.gguf`, for `llama-cli -m MODEL.gguf --control-vector control_vector.gguf`.
- `vector`: only the vector, for `steer(model, SteeringVector.load(folder))`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts import load_json, save_json
from ..basis import SkillBasis
from ..errors import AutoskillError
from ..models import resolve_model_path
from .bake import bake, share_permissions
from .llamacpp import export_llamacpp
from .vector import SteeringVector

FORMATS = ("hf", "llamacpp", "vector")
CONTROL_VECTOR_GGUF = "control_vector.gguf"
STEER_JSON = "steer.json"


@dataclass
class SteerConfig:
    """Which directions of which basis, how strongly, on which blocks, written in which format."""

    run: str
    """A profile run folder (or a basis folder)."""
    out: str
    """The output folder; must not exist or be empty."""
    directions: tuple[int, ...] = (0,)
    """Basis direction indices; several are summed."""
    weights: tuple[float, ...] | None = None
    """One weight per direction (default 1 each): vector = sign * alpha * sum_i weights[i] * u_i."""
    alpha: float = 0.5
    """Scale along the unit-norm concatenated direction (the paper: 0.5)."""
    sign: int = 1
    """+1 or -1: steer towards or away from the direction."""
    layers: tuple[int, ...] | None = None
    """Steer only these decoder blocks (default: every block of the basis)."""
    unscale: bool = True
    """Undo a pilot per-layer scale of the basis, so alpha is measured in feature space (see steering.vector)."""
    model: str | None = None
    """The model to bake (default: the one the run profiled)."""
    format: str = "hf"
    """"hf" (a baked model folder), "llamacpp" (a control-vector GGUF) or "vector"."""
    verify: bool = True
    """hf only: reload the baked folder and compare its logits with hook steering (holds two fp32 copies)."""

    def __post_init__(self):
        self.directions = tuple(int(i) for i in self.directions)
        if not self.directions:
            raise AutoskillError("give at least one --direction")
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            if len(self.weights) != len(self.directions):
                raise AutoskillError(f"got {len(self.weights)} weights for {len(self.directions)} directions")
        if self.sign not in (1, -1):
            raise AutoskillError(f"--sign must be + or -, got {self.sign}")
        if self.format not in FORMATS:
            raise AutoskillError(f"unknown --format {self.format!r}; choose one of {FORMATS}")
        if self.layers is not None:
            self.layers = tuple(sorted({int(i) for i in self.layers}))
            if not self.layers or self.layers[0] < 0:
                raise AutoskillError(f"--layers must name blocks by their index (0 or more), got {list(self.layers)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_model_spec(run: Path) -> str | None:
    """The --model a profile run used (None = the embedded default), from its run.json."""
    from ..profile import RUN_JSON

    run_json = run / RUN_JSON
    if not run_json.is_file():
        raise AutoskillError(f"{run}: no run.json to say which model was profiled; give --model")
    return load_json(run_json).get("config", {}).get("model", {}).get("model")


def build_vector(config: SteerConfig) -> SteeringVector:
    basis = SkillBasis.load(config.run)
    layers = config.layers
    if layers is not None:
        unknown = sorted(set(layers) - set(basis.layout.layer_ids))
        if unknown:
            raise AutoskillError(f"--layers {unknown} are not in the basis, which covers blocks "
                                 f"{list(basis.layout.layer_ids)}")
    return SteeringVector.from_basis(basis, config.directions, alpha=config.alpha, sign=config.sign,
                                     weights=config.weights, layers=layers, unscale=config.unscale,
                                     source=str(Path(config.run).resolve()))


def export_steering(config: SteerConfig) -> Path:
    """Build the vector from the run's basis and write it in `config.format`; return the output folder."""
    vector = build_vector(config)
    out = Path(config.out)
    if config.format == "hf":
        spec = config.model if config.model is not None else run_model_spec(Path(config.run))
        model_dir, _ = resolve_model_path(spec)
        bake(vector, model_dir, out, verify=config.verify)
        save_json(out / "steering" / STEER_JSON, config.to_json())
        share_permissions(out / "steering" / STEER_JSON)
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AutoskillError(f"{out}: already exists and is not empty; choose another --out or delete it")
    if config.format == "llamacpp":
        export_llamacpp(vector, out / CONTROL_VECTOR_GGUF)
    vector.save(out)
    save_json(out / STEER_JSON, config.to_json())
    share_permissions(out)
    return out
