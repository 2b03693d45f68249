"""Typed configuration of every job, validated on construction. Each run writes its resolved config beside its outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import AutoskillError

POOLING_MODES = ("mean", "last", "response_mean")
LAYER_SCALINGS = ("none", "l2", "pilot")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BAD_EXAMPLE_POLICIES = ("error", "skip")
PADDING_SIDES = ("right", "left")


@dataclass
class CorpusConfig:
    """Where the texts come from and how each record becomes one text."""

    path: str
    """A .jsonl/.parquet/.txt file or a `datasets.save_to_disk` folder."""
    format: str = "auto"
    """"auto" (from the suffix), "jsonl", "parquet", "text" or "datasets"."""
    text_field: str = "text"
    """The field holding the text (ignored when a template or a messages field is given)."""
    template: str | None = None
    """A str.format template over several fields, e.g. "{question}\\n{answer}"."""
    messages_field: str | None = None
    """A field of chat messages [{"role", "content"}], rendered with the tokenizer's chat template."""
    id_field: str | None = None
    """The field holding a stable id; the row number when absent."""
    limit: int | None = None
    """Read only the first `limit` records."""

    def __post_init__(self):
        if self.template is not None and self.messages_field is not None:
            raise AutoskillError("give either --template or --messages-field, not both")
        if self.limit is not None and self.limit <= 0:
            raise AutoskillError(f"--limit must be positive, got {self.limit}")


@dataclass
class PoolingConfig:
    """How one example's hidden states become one feature vector."""

    mode: str = "mean"
    """"mean" over valid tokens, "last" token, or "response_mean" (mean over the assistant reply of chat data)."""
    layers: tuple[int, ...] | None = None
    """Decoder-block indices (negative counts from the end); default: blocks 1 .. L-2, the paper's recipe."""
    skip_bos: bool = True
    """Leave out position 0 when it is the tokenizer's BOS token (the paper's recipe)."""
    layer_scaling: str = "none"
    """"none" (the paper), "l2" (each layer's pooled vector to unit norm), "pilot" (each layer divided by its RMS
    norm on the first batch, fixed for the run)."""
    max_length: int | None = None
    """Truncate longer examples to this many tokens (counted and reported)."""

    def __post_init__(self):
        if self.mode not in POOLING_MODES:
            raise AutoskillError(f"unknown pooling {self.mode!r}; choose one of {POOLING_MODES}")
        if self.layer_scaling not in LAYER_SCALINGS:
            raise AutoskillError(f"unknown layer scaling {self.layer_scaling!r}; choose one of {LAYER_SCALINGS}")
        if self.max_length is not None and self.max_length < 2:
            raise AutoskillError(f"--max-length must be at least 2, got {self.max_length}")
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
            if not self.layers:
                raise AutoskillError("--layers must name at least one layer")


@dataclass
class ModelConfig:
    """Which model to run and how."""

    model: str | None = None
    """A Hugging Face model folder, a .gguf file, or None for the embedded default (SmolLM2-135M-Instruct)."""
    dtype: str = "auto"
    """"auto" = bfloat16 on GPU, float32 on CPU."""
    device: str = "auto"
    """"auto" = cuda when available, else cpu; or any torch device string."""
    trust_remote_code: bool = False
    """Run code shipped with the model folder. Off unless asked for."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise AutoskillError(f"unknown dtype {self.dtype!r}; choose one of {DTYPES}")


@dataclass
class ProfileConfig:
    """The profile job: corpus -> model -> pooled features -> streaming statistics -> skill basis."""

    corpus: CorpusConfig
    out: str
    """The output folder (also holds the checkpoint of an unfinished run)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    k: int = 64
    """Number of directions in the basis."""
    token_budget: int | None = None
    """Upper bound on padded tokens per batch (batch size x longest example). None: 512 on CPU, where small batches
    stay in cache and ran 1.8x faster than 8192-token ones on the default model; 32768 on GPU."""
    max_batch_size: int = 64
    sort_window: int = 4096
    """Examples read ahead and sorted by length into buckets; bounds memory on huge corpora."""
    padding_side: str = "right"
    save_features: bool = False
    features_dtype: str = "float32"
    scores: bool = True
    """Write per-example scores (centered projection and the paper's cosine) for every direction."""
    on_bad_example: str = "error"
    checkpoint_every: int | None = None
    """Also save statistics and position every this many batches (default: by time only)."""
    checkpoint_seconds: float = 600.0
    """Save statistics and position at least this often; a save that takes s seconds (the packed statistics are D^2 / 2
    numbers) stretches the interval to 100 s, so that checkpoints cost at most 1% of the run."""
    shard: tuple[int, int] = (0, 1)
    """(i, n): profile only the i-th of n interleaved slices of the corpus; merge the results with `merge`."""
    eig_tol: float = 1e-6
    sketch_size: int | None = None
    """Rows of a Frequent Directions sketch used in place of the exact (packed, D^2 / 2) second moment, for when it
    cannot fit."""
    quiet: bool = False

    def __post_init__(self):
        if self.k <= 0:
            raise AutoskillError(f"-k must be positive, got {self.k}")
        if (self.token_budget is not None and self.token_budget <= 0) or self.max_batch_size <= 0 or self.sort_window <= 0:
            raise AutoskillError("--token-budget, --max-batch-size and --sort-window must be positive")
        if self.padding_side not in PADDING_SIDES:
            raise AutoskillError(f"--padding-side must be one of {PADDING_SIDES}")
        if self.on_bad_example not in BAD_EXAMPLE_POLICIES:
            raise AutoskillError(f"--on-bad-example must be one of {BAD_EXAMPLE_POLICIES}")
        if self.features_dtype not in ("float32", "bfloat16", "float16"):
            raise AutoskillError(f"--features-dtype must be float32, bfloat16 or float16, got {self.features_dtype!r}")
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise AutoskillError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
        if self.sketch_size is not None and self.sketch_size < 2 * self.k:
            raise AutoskillError(f"--sketch-size {self.sketch_size} is too small for -k {self.k}; use at least {2 * self.k}")
        if self.checkpoint_every is not None and self.checkpoint_every <= 0:
            raise AutoskillError("--checkpoint-every must be positive")
        if not self.checkpoint_seconds > 0:
            raise AutoskillError("--checkpoint-seconds must be positive")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
