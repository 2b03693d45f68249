"""Two profiles of one corpus (two models, or two runs of one model): do they organise the same data along the same
axes? (the paper's Table 1)

Examples are matched by id. Three views, from the most to the least tied to individual directions:
- pole overlap: per pair of directions (a of A, b of B), the Jaccard overlap of their pole examples, with B's sign
  aligned to A's (a direction's sign is arbitrary, so the better of the two alignments is kept);
- the correlation matrix between the two models' per-example scores [k_A, k_B];
- canonical correlations between the two score spaces: how much of one k-dimensional view is a linear function of
  the other, whatever the rotation of the axes inside each.

Canonical correlations climb to 1 for any data once the examples are few for the dimension: independent random scores
of 64 examples x 32 directions on each side give 1.000. So they come with a null: the same statistic with B's rows
permuted (seeded), which breaks every pairing of examples and keeps each side's own structure: only correlations
clearly above the null's point to structure the two share. Below `MIN_EXAMPLES_PER_DIM` shared examples per score
dimension, compare also warns (`too_few_examples`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..artifacts import save_json, save_text
from ..capture.fingerprint import model_mismatch
from ..config import ConfigError
from ..data.corpus import content_identity
from ..errors import AutoskillError
from ..run.reading import ProfileRun, load_run
from .ranking import pole_indicators

# Below this many shared examples per score dimension (k_A + k_B), compare warns. It is the usual rule of thumb for
# CCA (about ten cases per variable), and where independent scores stop looking related: with k_A = k_B their largest
# canonical correlation is then about 0.44 (the edge of the Wachter law, `null_edge`) and their mean about 0.2, while
# at 2 examples per dimension the largest reach 1.
MIN_EXAMPLES_PER_DIM = 10


def match_ids(ids_a: list[str], ids_b: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (pos_a, pos_b) of the ids both lists hold, in A's order."""
    where_b = {example_id: j for j, example_id in enumerate(ids_b)}
    pairs = [(i, where_b[example_id]) for i, example_id in enumerate(ids_a) if example_id in where_b]
    if not pairs:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    pos = torch.tensor(pairs, dtype=torch.int64)
    return pos[:, 0], pos[:, 1]


def pole_jaccard(values_a: torch.Tensor, values_b: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-aligned Jaccard overlap of pole sets: (J [k_A, k_B] fp64, sign [k_A, k_B] int64 of B matching A).

    J[a, b] = max over s in {+1, -1} of the mean of J(top_a, pole_s(b)) and J(bottom_a, pole_-s(b)); rows of the two
    value matrices must be the same examples. Every set has exactly n members, so J = |A & B| / (2n - |A & B|).
    """
    if values_a.shape[0] != values_b.shape[0]:
        raise AutoskillError("pole overlap needs the same examples on both sides; match them by id first")
    top_a, bottom_a = (m.to(torch.float32) for m in pole_indicators(values_a, n))
    top_b, bottom_b = (m.to(torch.float32) for m in pole_indicators(values_b, n))

    def jaccard(x, y):  # [N, kA], [N, kB] indicators -> [kA, kB]
        inter = (x.T @ y).to(torch.float64)  # exact: counts below 2^24
        return inter / (2 * n - inter)

    same = (jaccard(top_a, top_b) + jaccard(bottom_a, bottom_b)) / 2
    flipped = (jaccard(top_a, bottom_b) + jaccard(bottom_a, top_b)) / 2
    sign = torch.where(flipped > same, -1, 1).to(torch.int64)
    return torch.maximum(same, flipped), sign


def score_correlation(a_nk: torch.Tensor, b_nk: torch.Tensor) -> torch.Tensor:
    """Pearson correlations [k_A, k_B] between the columns of a and b (fp64; a constant column correlates 0)."""
    a = a_nk.to(torch.float64)
    b = b_nk.to(torch.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    na, nb = a.norm(dim=0), b.norm(dim=0)
    corr = (a.T @ b) / torch.outer(na, nb)
    corr[(na == 0)[:, None] | (nb == 0)[None, :]] = 0.0
    return corr.clamp(-1.0, 1.0)


def _orthonormal_columns(x_nk: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis [N, r] of the centered columns' span, r = numerical rank (QR, then the SVD of R)."""
    x = x_nk.to(torch.float64)
    x = x - x.mean(0)
    q, r = torch.linalg.qr(x)
    u, s, _ = torch.linalg.svd(r)
    # Rank tolerance as numpy.linalg.matrix_rank: singular values below s_max * max(N, k) * eps are noise.
    keep = s > s.max().clamp_min(torch.finfo(torch.float64).tiny) * max(x.shape) * torch.finfo(torch.float64).eps
    return q @ u[:, keep]


def canonical_correlations(a_nk: torch.Tensor, b_nk: torch.Tensor) -> torch.Tensor:
    """Canonical correlations between the column spaces of a and b, descending: [min(rank_a, rank_b)] fp64.

    Each side is whitened by an orthonormal basis of its centered span (QR, then SVD for the rank); the canonical
    correlations are the singular values of Q_a^T Q_b. This never forms a covariance matrix or its inverse, so it stays
    accurate when a side is nearly rank-deficient.
    """
    qa, qb = _both_sides(a_nk, b_nk)
    return _singular_values(qa, qb)


def canonical_null(a_nk: torch.Tensor, b_nk: torch.Tensor, permutations: int, seed: int = 0) -> torch.Tensor:
    """Canonical correlations with B's rows permuted (`permutations` seeded draws): [permutations, r] fp64, each row
    descending. The null of "no pairing between A's and B's examples": each side keeps its own distribution.

    A row permutation commutes with centering, so the permuted side's orthonormal basis is its basis permuted: one QR
    per side, then one small product per draw.
    """
    qa, qb = _both_sides(a_nk, b_nk)
    generator = torch.Generator().manual_seed(seed)
    draws = [_singular_values(qa, qb[torch.randperm(qb.shape[0], generator=generator)]) for _ in range(permutations)]
    return torch.stack(draws) if draws else torch.zeros(0, min(qa.shape[1], qb.shape[1]), dtype=torch.float64)


def null_edge(n: int, k_a: int, k_b: int) -> float:
    """The largest canonical correlation independent Gaussian scores of n examples x (k_a, k_b) reach, for large n:
    the square root of the upper edge of the Wachter law, (sqrt(a (1 - b)) + sqrt(b (1 - a)))^2 with a = k_a / n and
    b = k_b / n; 1 once a + b >= 1 (then some pairs are exactly 1)."""
    a, b = k_a / max(n, 1), k_b / max(n, 1)
    if a + b >= 1:
        return 1.0
    return min(1.0, (a * (1 - b)) ** 0.5 + (b * (1 - a)) ** 0.5)


def too_few_examples(n: int, k_a: int, k_b: int) -> str | None:
    """A one-line warning when n shared examples are too few to read canonical correlations of k_a x k_b dimensions
    (fewer than `MIN_EXAMPLES_PER_DIM` per dimension); None when they are enough."""
    needed = MIN_EXAMPLES_PER_DIM * (k_a + k_b)
    if n >= needed:
        return None
    return (f"{n} shared examples are too few for {k_a} + {k_b} score dimensions (fewer than {needed}, "
            f"{MIN_EXAMPLES_PER_DIM} per dimension): independent random scores of this shape reach canonical "
            f"correlations up to about {null_edge(n, k_a, k_b):.2f}; read them against the permutation null, or "
            "compare fewer directions or more examples")


def _both_sides(a_nk: torch.Tensor, b_nk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a_nk.shape[0] != b_nk.shape[0]:
        raise AutoskillError("canonical correlations need the same examples on both sides; match them by id first")
    return _orthonormal_columns(a_nk), _orthonormal_columns(b_nk)


def _singular_values(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    return torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0)


@dataclass
class Comparison:
    """Two profiles of one corpus, compared on the examples they share."""

    name_a: str
    name_b: str
    n_shared: int
    n_only_a: int
    n_only_b: int
    n_pole: int
    by: str
    jaccard: torch.Tensor  # [kA, kB] fp64
    jaccard_sign: torch.Tensor  # [kA, kB] int64, +1 where B's direction points the same way as A's
    correlation: torch.Tensor  # [kA, kB] fp64
    canonical: torch.Tensor  # [r] fp64, descending
    labels_a: list[str | None]
    labels_b: list[str | None]
    null: torch.Tensor | None = None  # [permutations, r] fp64: canonical correlations with B's rows permuted
    seed: int = 0  # of the permutations
    models_differ: bool = True  # the two runs' model fingerprints disagree (False: two runs of one model)
    warnings: list[str] = field(default_factory=list)

    @property
    def other(self) -> str:
        """What B is to A, in headings: "another model" or "another run" (of the same model)."""
        return "another model" if self.models_differ else "another run"

    @property
    def null_mean(self) -> torch.Tensor | None:
        """Per canonical pair, the null's mean [r] fp64 (None without a null)."""
        return self.null.mean(0) if self.null is not None and self.null.shape[0] else None

    @property
    def null_p95(self) -> torch.Tensor | None:
        """Per canonical pair, the null's 95th percentile [r] fp64 (linear interpolation between draws)."""
        return torch.quantile(self.null, 0.95, dim=0) if self.null is not None and self.null.shape[0] else None

    @property
    def above_null(self) -> int:
        """How many canonical correlations exceed the null's 95th percentile of the same rank."""
        p95 = self.null_p95
        return 0 if p95 is None else int((self.canonical > p95).sum())

    def best_matches(self, side: str = "a") -> list[dict[str, Any]]:
        """For each direction of one side, the other side's direction whose poles overlap most."""
        jac = self.jaccard if side == "a" else self.jaccard.T
        corr = self.correlation if side == "a" else self.correlation.T
        sign = self.jaccard_sign if side == "a" else self.jaccard_sign.T
        best = torch.argmax(jac, dim=1)  # ties: the lower index
        return [{"direction": i, "match": int(j), "jaccard": float(jac[i, j]), "sign": int(sign[i, j]),
                 "correlation": float(corr[i, j]), "best_abs_correlation": float(corr[i].abs().max())}
                for i, j in enumerate(best.tolist())]

    def to_json(self) -> dict[str, Any]:
        null = None
        if self.null_mean is not None:
            null = {"method": "B's rows permuted", "permutations": self.null.shape[0], "seed": self.seed,
                    "mean": self.null_mean.tolist(), "p95": self.null_p95.tolist(), "above_p95": self.above_null}
        return {"a": self.name_a, "b": self.name_b, "models_differ": self.models_differ, "n_shared": self.n_shared,
                "n_only_a": self.n_only_a, "n_only_b": self.n_only_b, "n_pole": self.n_pole, "by": self.by,
                "canonical_correlations": self.canonical.tolist(), "canonical_null": null,
                "warnings": self.warnings, "jaccard": self.jaccard.tolist(),
                "jaccard_sign": self.jaccard_sign.tolist(), "correlation": self.correlation.tolist(),
                "best_matches_a": self.best_matches("a"), "best_matches_b": self.best_matches("b")}


def _run_name(run: ProfileRun) -> str:
    model = run.model_name
    return f"{run.folder.name} ({model})" if model else run.folder.name


def _check_same_rows(run_a: ProfileRun, run_b: ProfileRun) -> str | None:
    """Ids that are row numbers (no id field) match examples only within one corpus file: refuse two files, and a run
    by row against one by an id field (or one file read by two id fields); a warning when a run has no run.json to say
    which file it profiled."""
    missing = [str(run.folder) for run in (run_a, run_b) if run.record is None]
    if missing:
        return (f"{' and '.join(missing)} has no run.json, so whether both profiled one corpus file is not checked: "
                "examples are matched by id (row numbers, without an id field)")
    corpus_a, corpus_b = run_a.record.corpus, run_b.record.corpus
    field_a, field_b = corpus_a.get("id_field"), corpus_b.get("id_field")
    if field_a != field_b and (field_a is None or field_b is None or corpus_a.get("sha256") == corpus_b.get("sha256")):
        def ids(field: str | None) -> str:
            return f"ids from --id-field {field}" if field else "row numbers for ids (no --id-field)"

        raise AutoskillError(f"{run_a.folder} took {ids(field_a)} and {run_b.folder} {ids(field_b)}, so the same id "
                             "names different examples (record 7 of one is not the example with id 7 of the other); "
                             "profile both with the same --id-field")
    by_row = field_a is None or field_b is None
    if by_row and corpus_a.get("sha256") and corpus_b.get("sha256") and corpus_a["sha256"] != corpus_b["sha256"]:
        raise AutoskillError(f"{run_a.folder} and {run_b.folder} profiled different corpus files "
                             f"({content_identity(corpus_a)}; {content_identity(corpus_b)}) whose examples are named "
                             "by row number (no id field), so their ids do not match examples; compare profiles of "
                             "one file, or of files with an id field (--id-field)")
    return None


def compare_runs(run_a: ProfileRun, run_b: ProfileRun, *, n_pole: int = 50, by: str = "projection",
                 permutations: int = 20, seed: int = 0) -> Comparison:
    """Compare two profiles on the examples they share (matched by id), with the canonical correlations' permutation
    null (`permutations` draws, seeded)."""
    unchecked = _check_same_rows(run_a, run_b)
    pos_a, pos_b = match_ids(run_a.scores.ids, run_b.scores.ids)
    n = pos_a.numel()
    if n < 3:
        raise AutoskillError(f"{run_a.folder} and {run_b.folder} share {n} example id(s); compare needs two profiles "
                             "of the same corpus (with the same id field)")
    if n_pole <= 0:
        raise AutoskillError(f"--n-pole must be positive, got {n_pole}")
    n_pole = min(n_pole, max(1, n // 4))  # poles of one direction must not overlap each other
    a = getattr(run_a.scores, by)[pos_a]
    b = getattr(run_b.scores, by)[pos_b]
    jaccard, sign = pole_jaccard(a, b, n_pole)
    proj_a, proj_b = run_a.scores.projection[pos_a], run_b.scores.projection[pos_b]
    warning = too_few_examples(n, proj_a.shape[1], proj_b.shape[1])
    return Comparison(_run_name(run_a), _run_name(run_b), n, run_a.n - n, run_b.n - n, n_pole, by, jaccard, sign,
                      score_correlation(a, b), canonical_correlations(proj_a, proj_b),
                      list(run_a.basis.labels), list(run_b.basis.labels),
                      null=canonical_null(proj_a, proj_b, permutations, seed), seed=seed,
                      models_differ=model_mismatch(run_a.basis.model, run_b.basis.model) is not None,
                      warnings=[w for w in (unchecked, warning) if w])


@dataclass
class CompareConfig:
    """Compare two profiles of one corpus."""

    run_a: str
    """The first profile's folder (A)."""
    run_b: str
    """The second profile's folder (B), of the same corpus: another model, or another run of the same model."""
    n_pole: int = 50
    """Examples per pole in the Jaccard overlaps (at most a quarter of the shared examples)."""
    by: Literal["projection", "cosine"] = "projection"
    """Scores that define poles and correlations."""
    json: str | None = None
    """Write the matrices and matches to this JSON file."""
    html: str | None = None
    """Write an HTML report of the comparison to this file."""
    permutations: int = 20
    """Draws of the canonical correlations' null (B's rows permuted); 0 for none."""
    seed: int = 0
    """The seed of those permutations."""

    def __post_init__(self):
        if self.by not in ("projection", "cosine"):
            raise ConfigError("CompareConfig", "by", f"must be projection or cosine, got {self.by!r}")
        if self.n_pole <= 0:
            raise ConfigError("CompareConfig", "n_pole", f"must be positive, got {self.n_pole}")
        if self.permutations < 0:
            raise ConfigError("CompareConfig", "permutations", f"must be 0 or more, got {self.permutations}")


def compare(config: CompareConfig) -> Comparison:
    run_a, run_b = load_run(config.run_a), load_run(config.run_b)
    for option, path in (("--json", config.json), ("--html", config.html)):
        if path:
            run_a.check_output(path, option)
            run_b.check_output(path, option)
    comparison = compare_runs(run_a, run_b, n_pole=config.n_pole, by=config.by, permutations=config.permutations,
                              seed=config.seed)
    if config.json:
        save_json(config.json, comparison.to_json())
    if config.html:
        from .report_html import render_comparison_page

        save_text(config.html, render_comparison_page(run_a, run_b, comparison))
    return comparison


def format_comparison(c: Comparison, *, limit: int = 10) -> str:
    """The comparison in a few terminal lines."""
    cc = c.canonical
    lines = [f"A = {c.name_a}, B = {c.name_b} ({c.other}): {c.n_shared} shared examples "
             f"({c.n_only_a} only in A, {c.n_only_b} only in B)"]
    lines.extend(f"warning: {warning}" for warning in c.warnings)
    if cc.numel():
        shown = " ".join(f"{v:.3f}" for v in cc[:limit].tolist())
        lines.append(f"canonical correlations ({cc.numel()}): {shown}{' ...' if cc.numel() > limit else ''}; "
                     f"mean {float(cc.mean()):.3f}, {int((cc > 0.9).sum())} above 0.9")
        if c.null_mean is not None:
            null = " ".join(f"{v:.3f}" for v in c.null_mean[:limit].tolist())
            lines.append(f"  null (B's rows permuted, {c.null.shape[0]} draws, seed {c.seed}): {null}"
                         f"{' ...' if cc.numel() > limit else ''}; mean {float(c.null_mean.mean()):.3f}; "
                         f"{c.above_null} of {cc.numel()} above the null's 95th percentile")
    lines.append(f"best match of each A direction (pole Jaccard, {c.n_pole} per pole, by {c.by}; r = score correlation):")
    for m in c.best_matches("a")[:limit]:
        lines.append(f"  A{m['direction']:<3} -> B{m['match']:<3} ({'+' if m['sign'] > 0 else '-'})  "
                     f"J={m['jaccard']:.3f}  r={m['correlation']:+.3f}  max|r|={m['best_abs_correlation']:.3f}")
    if c.jaccard.shape[0] > limit:
        lines.append(f"  ... {c.jaccard.shape[0] - limit} more")
    return "\n".join(lines)
