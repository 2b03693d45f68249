"""The `steer` job: a profile run's basis -> a steering vector -> a baked checkpoint, a llama.cpp GGUF, or the vector.

Output folder by format (each also holds the vector and the resolved config, `steer.json`):
- `hf`: a model folder that transformers and vLLM load as is; the vector and records go to its `steering/`.
- `llamacpp`: `control_vector.gguf`, for `llama-cli -m MODEL.gguf --control-vector control_vector.gguf`; with
  `--out NAME.gguf`, that file alone (its metadata holds the recipe).
- `vector`: only the vector, for `steer(model, SteeringVector.load(folder))`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..artifacts import atomic_folder, save_json
from ..config import ConfigError, choices, cli, parse_layers
from ..errors import AutoskillError
from ..capture.models import resolve_model_path
from ..run.folder import RunFolder, load_basis
from ..run.ranking import Ranking
from .baking import STEER_JSON, bake
from .llamacpp import export_llamacpp
from .vector import SteeringVector

SteerFormat = Literal["hf", "llamacpp", "vector"]
CONTROL_VECTOR_GGUF = "control_vector.gguf"


@dataclass
class SteerConfig:
    """Which directions of which basis, how strongly, on which blocks, written in which format."""

    run: str
    """A profile run folder (or a basis folder)."""
    out: str
    """The output folder (must not exist, or be empty); with --format llamacpp, a .gguf file or a folder."""
    directions: tuple[int | str, ...] = field(default=(0,), metadata=cli("--direction", short="-d", multiple=True,
                                                                         metavar="INDEX[:WEIGHT]"))
    """Basis directions, summed; an entry "3:-0.5" gives direction 3 the weight -0.5. Default: direction 0."""
    weights: tuple[float, ...] | None = field(default=None, metadata=cli(omit=True))
    """One weight per direction (default 1 each): vector = sign * alpha * sum_i weights[i] * u_i."""
    alpha: float = 0.5
    """Scale along the direction (the paper: 0.5 on the unit-norm concatenated direction)."""
    alpha_unit: Literal["norm", "std"] = "norm"
    """norm: alpha on the unit-norm concatenated direction (the paper); std: alpha in the direction's standard
    deviations on the profiled corpus (comparable across models and directions)."""
    sign: int = field(default=1, metadata=cli(choices=("+", "-"), parse=lambda s: 1 if s == "+" else -1, shown="+"))
    """Towards (+, 1) or away from (-, -1) the direction."""
    layers: tuple[int, ...] | None = field(default=None, metadata=cli(parse=parse_layers, metavar="LAYERS"))
    """Steer only these blocks, e.g. 1-28 or 5,10 (default: every block of the basis)."""
    unscale: bool = field(default=True, metadata=cli("--keep-layer-scale"))
    """Undo a pilot per-layer scale of the basis, so alpha is measured in feature space (--keep-layer-scale: do not)."""
    model: str | None = None
    """The model folder or .gguf to bake (default: the one the run profiled)."""
    format: SteerFormat = "hf"
    """hf: a model folder transformers and vLLM serve as is; llamacpp: a control-vector GGUF; vector: the vector."""
    verify: bool = True
    """hf only: reload the baked folder and compare its logits with hook steering (holds two fp32 copies)."""
    ranking: str | None = None
    """A ranking.json (or its run folder): steer with its best entry (direction, sign and, from the steer proxy,
    alpha) instead of --direction / --sign / --alpha."""
    top: int = 1
    """With --ranking: add its `top` best directions, each at its best sign and (steer proxy) alpha."""

    def __post_init__(self):
        owner = "SteerConfig"
        directions, weights = [], []
        for entry in self.directions:
            index, _, weight = str(entry).partition(":")
            try:
                directions.append(int(index))
                weights.append(float(weight) if weight else 1.0)
            except ValueError:
                raise ConfigError(owner, "directions", f"cannot read {entry!r}; use an index, or INDEX:WEIGHT such as "
                                                       "3:-0.5") from None
        if not directions:
            raise ConfigError(owner, "directions", "give at least one direction")
        if self.weights is not None:
            if len(self.weights) != len(directions) or any(":" in str(entry) for entry in self.directions):
                raise ConfigError(owner, "weights", f"give one weight per direction ({len(directions)}), either here "
                                                    "or as INDEX:WEIGHT entries, not both")
            weights = [float(w) for w in self.weights]
        typed_apart = self.weights is not None  # else as INDEX:WEIGHT entries of --direction
        self.directions, self.weights = tuple(directions), tuple(weights)
        if not all(math.isfinite(w) for w in self.weights):
            raise ConfigError(owner, "weights" if typed_apart else "directions",
                              f"weights must be finite numbers, got {list(self.weights)}")
        if not math.isfinite(self.alpha):
            raise ConfigError(owner, "alpha", f"must be a finite number, got {self.alpha}")
        if self.sign not in (1, -1):
            raise ConfigError(owner, "sign", f"must be +1 or -1 (+ or -), got {self.sign}")
        if self.alpha_unit not in ("norm", "std"):
            raise ConfigError(owner, "alpha_unit", f"must be norm or std, got {self.alpha_unit!r}")
        if self.top < 1:
            raise ConfigError(owner, "top", f"must be positive, got {self.top}")
        if self.ranking is not None and (self.directions, self.weights, self.sign) != ((0,), (1.0,), 1):  # typed
            raise ConfigError(owner, "ranking", "the ranking gives the directions and signs; give either a ranking or "
                                                "--direction / --sign, not both")
        if self.model is not None and self.format != "hf":
            raise ConfigError(owner, "model", "is the model a baked checkpoint is made from (--format hf); the "
                                              f"{self.format} format holds the vector alone: drop it")
        if self.format not in choices(SteerFormat):
            raise ConfigError(owner, "format", f"unknown value {self.format!r}; choose one of "
                                               f"{', '.join(choices(SteerFormat))}")
        if self.layers is not None:
            self.layers = tuple(sorted({int(i) for i in self.layers}))
            if not self.layers or self.layers[0] < 0:
                raise ConfigError(owner, "layers", f"must name blocks by their index (0 or more), got {list(self.layers)}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_model_spec(run: Path) -> str | None:
    """The --model a profile run used (None = the embedded default), from its run.json."""
    folder = RunFolder(run)
    if not folder.has_record():
        raise AutoskillError(f"{run}: no run.json to say which model was profiled; give --model")
    return folder.record().config.get("model", {}).get("model")


def build_vector(config: SteerConfig) -> SteeringVector:
    basis = load_basis(config.run)
    if config.ranking is not None:
        return _ranked_vector(config, basis)
    layers = config.layers
    if layers is not None:
        unknown = sorted(set(layers) - set(basis.layout.layer_ids))
        if unknown:
            raise AutoskillError(f"--layers {unknown} are not in the basis, which covers blocks "
                                 f"{list(basis.layout.layer_ids)}")
    return SteeringVector.from_basis(basis, config.directions, alpha=config.alpha, sign=config.sign,
                                     weights=config.weights, layers=layers, unscale=config.unscale,
                                     unit=config.alpha_unit, source=str(Path(config.run).resolve()))


def _ranked_vector(config: SteerConfig, basis) -> SteeringVector:
    """The sum of the ranking's `top` best directions, each at its best entry's sign and (steer proxy) alpha and unit
    (the opposite pole of a direction taken is left out: it would cancel it)."""
    ranking = Ranking.load(config.ranking)
    ranking.check_basis(basis, config.ranking)
    chosen = ranking.best(config.top, per="direction")
    defaults = {f.name: f.default for f in fields(SteerConfig)}
    typed = (config.alpha, config.alpha_unit) != (defaults["alpha"], defaults["alpha_unit"])
    if typed and any(entry.alpha is not None for entry in chosen):
        raise AutoskillError(f"{config.ranking}: a steer ranking gives each direction its alpha; drop --alpha / "
                             "--alpha-unit (they set the strength of a correlation or pilot ranking's directions)")
    vector = None
    for entry in chosen:
        alpha = entry.alpha if entry.alpha is not None else config.alpha
        unit = entry.alpha_unit or config.alpha_unit
        term = SteeringVector.from_basis(basis, entry.direction, alpha=alpha, sign=entry.sign, layers=config.layers,
                                         unscale=config.unscale, unit=unit, source=str(Path(config.run).resolve()))
        vector = term if vector is None else vector + term
    return vector


def export_steering(config: SteerConfig) -> Path:
    """Build the vector from the run's basis and write it in `config.format`; return the output folder, or the .gguf
    file itself when `--format llamacpp --out NAME.gguf` (what `llama-cli --control-vector` takes; it ignores a
    folder without a word)."""
    vector = build_vector(config)
    out = Path(config.out)
    if config.format == "llamacpp" and out.suffix.lower() == ".gguf":
        if out.is_dir():
            raise AutoskillError(f"{out}: is a folder; --out NAME.gguf writes the control-vector file itself")
        if out.exists():  # a mistyped name could be a model's weights
            raise AutoskillError(f"{out}: already exists; choose a new name for the control vector, or remove it")
        return export_llamacpp(vector, out)  # the recipe is in the file's metadata (autoskill.steering)
    if config.format == "hf":
        spec = config.model if config.model is not None else run_model_spec(Path(config.run))
        model_dir, _ = resolve_model_path(spec)
        return bake(vector, model_dir, out, verify=config.verify, recipe=config.to_json())
    with atomic_folder(out) as tmp:  # the folder appears whole or not at all
        if config.format == "llamacpp":
            export_llamacpp(vector, tmp / CONTROL_VECTOR_GGUF)
        vector.save(tmp)
        save_json(tmp / STEER_JSON, config.to_json())
    return out
