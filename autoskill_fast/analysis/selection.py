"""Selecting training data along a skill basis, from a profile's stored scores.

- pole: the examples furthest along +d or -d for one or several directions, the budget split across them;
- coverage: greedy k-center (farthest-point sampling) in the top-k score space, from the example farthest from the
  mean (the paper's safety recipe); the order is nested: its first b lines are the selection of budget b;
- random: a seeded uniform sample, and text: greedy k-center on TF-IDF vectors (the baselines to compare against).

The output is a JSONL of the original records, unchanged but for one added key, `_autoskill` (id, row, method and the
reason each was picked), in selection order, and a manifest JSON beside it (basis, method, budget, seed, counts).

Coverage measures distance in one of two metrics (`SelectConfig.metric`):
- whitened (the paper's): each direction scaled to unit variance. Every direction weighs the same, so a distinctive
  group along a low-variance direction is reached early; but the dominant split of the corpus then weighs no more
  than the k-th direction, and with many directions the first picks can all come from one side of it (30 texts on
  two topics, k = 8: the first 7 picks from one topic). Fewer directions (`dims`) soften this.
- euclidean: the raw centered projections, so each direction weighs by its standard deviation. The first picks
  span the largest splits of the corpus (both sides of the dominant one within the first two picks, when the gap
  between them is wider than either side); structure along low-variance directions is reached only once it stands
  out from the spread along the large ones.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..artifacts import save_json, save_jsonl
from ..basis import ROUNDING_VARIANCE
from ..config import ConfigError, choices, cli
from ..data.corpus import same_reading
from ..errors import AutoskillError
from ..run.ranking import Ranking
from ..run.reading import ProfileRun, fetch_records, iter_texts, load_run
from .kcenter import farthest_point_order
from .ranking import top_positions

SelectMethod = Literal["coverage", "pole", "random", "text"]
ScoreKind = Literal["projection", "cosine"]
CoverageMetric = Literal["whitened", "euclidean"]
# Whitening a direction whose spread is below this share of the largest one's would scale rounding up to a full
# direction: the spread of basis.ROUNDING_VARIANCE.
NOISE_SPREAD = ROUNDING_VARIANCE ** 0.5
ADDED_KEY = "_autoskill"  # the one key added to each selected record


@dataclass
class SelectConfig:
    """One selection from a profile run."""

    run: str
    """The profile's output folder (basis, scores, run.json)."""
    out: str = field(metadata=cli(metavar="FILE"))
    """The JSONL of the selected records, in selection order (the manifest goes beside it as <name>.manifest.json)."""
    budget: int = field(metadata=cli(short="-n"))
    """How many examples to select."""
    method: SelectMethod | None = None
    """coverage (the default): greedy k-center in the score space (see --metric); pole (the default with --ranking):
    the ends of directions; random / text: baselines (seeded uniform; k-center on TF-IDF)."""
    directions: tuple[str, ...] = field(default=(), metadata=cli("--direction", short="-d", multiple=True))
    """For pole: +I or -I (one end of direction I) or I (both ends); repeat or comma-separate."""
    by: ScoreKind = "projection"
    """For pole: rank by the centered projection or by the paper's cosine."""
    dims: int | None = None
    """For coverage: use the first DIMS directions (default: all)."""
    metric: CoverageMetric = "whitened"
    """For coverage: whitened (the paper's: every direction scaled to unit variance, so a small group along a minor
    direction is reached early, but the corpus's dominant split weighs no more than the last direction) or euclidean
    (the raw centered projections: directions weigh by their spread, so the largest splits are covered first)."""
    seed: int = 0
    """For random and text: the seed."""
    text_dim: int = 256
    """For text: TF-IDF projected to this many dims (distances kept within a few %)."""
    corpus: str | None = None
    """The corpus, if it moved since profiling."""
    ranking: str | None = None
    """A ranking.json (or its run folder): select along its best directions at their useful pole (--method pole)."""
    top: int = 1
    """With --ranking: how many of its best poles (direction, sign)."""

    def __post_init__(self):
        owner = "SelectConfig"
        if self.ranking is not None:
            if self.directions:
                raise ConfigError(owner, "ranking", "give either a ranking or directions, not both")
            if self.top < 1:
                raise ConfigError(owner, "top", f"must be positive, got {self.top}")
            if self.method not in (None, "pole"):
                raise ConfigError(owner, "method", f"a ranking selects at the poles of its best directions; "
                                                   f"--method {self.method} would ignore it")
            self.method = "pole"  # along the ranking's best directions
        elif self.method is None:
            self.method = "coverage"
        if self.ranking is None and self.top != 1:
            raise ConfigError(owner, "top", "picks the best entries of a ranking (--ranking); there is none to pick "
                                            "from")
        if self.method not in choices(SelectMethod):
            raise ConfigError(owner, "method", f"unknown value {self.method!r}; choose one of "
                                               f"{', '.join(choices(SelectMethod))}")
        if self.budget <= 0:
            raise ConfigError(owner, "budget", f"must be positive, got {self.budget}")
        if self.by not in choices(ScoreKind):
            raise ConfigError(owner, "by", f"must be projection or cosine, got {self.by!r}")
        if self.metric not in choices(CoverageMetric):
            raise ConfigError(owner, "metric", f"must be whitened or euclidean, got {self.metric!r}")
        if self.method == "pole" and not self.directions and self.ranking is None:
            raise ConfigError(owner, "directions", "pole selection needs at least one direction, e.g. +0 and -3")
        if self.method != "pole" and self.directions:
            raise ConfigError(owner, "directions", f"only applies to the pole method, not {self.method}")
        if self.dims is not None and self.dims <= 0:
            raise ConfigError(owner, "dims", f"must be positive, got {self.dims}")
        if self.method != "coverage" and (self.dims is not None or self.metric != "whitened"):
            raise ConfigError(owner, "dims" if self.dims is not None else "metric",
                              f"shapes the coverage method's space, not the {self.method} method's; drop it")
        if self.text_dim <= 0:
            raise ConfigError(owner, "text_dim", f"must be positive, got {self.text_dim}")
        self.directions = tuple(str(d) for d in self.directions)


@dataclass(frozen=True)
class Pole:
    direction: int
    sign: int  # +1: the largest scores, -1: the smallest

    @property
    def name(self) -> str:
        return f"{'+' if self.sign > 0 else '-'}{self.direction}"


def parse_poles(specs: tuple[str, ...] | list[str], k: int) -> list[Pole]:
    """"+3" / "-3" / "3" (both poles), also comma-separated ("+0,-2"), as poles of a basis with k directions."""
    poles: list[Pole] = []
    for spec in (part.strip() for item in specs for part in str(item).split(",")):
        match = re.fullmatch(r"([+-]?)(\d+)", spec)
        if not match:
            raise AutoskillError(f"bad direction {spec!r}: write +3 or -3 for one pole of direction 3, or 3 for both")
        sign, index = match.group(1), int(match.group(2))
        if index >= k:
            raise AutoskillError(f"direction {index} out of range: the basis has {k} directions (0..{k - 1})")
        for s in ((+1,) if sign == "+" else (-1,) if sign == "-" else (+1, -1)):
            pole = Pole(index, s)
            if pole in poles:
                raise AutoskillError(f"pole {pole.name} is named twice in --direction")
            poles.append(pole)
    if not poles:
        raise AutoskillError("no direction given; e.g. --direction +0")
    return poles


def pole_order(scores_nk: torch.Tensor, poles: list[Pole], budget: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Pick `budget` examples for the poles, round-robin (one per pole per round), never the same example twice.

    Budgets are split evenly (the first poles get one more when it does not divide). Returns positions [budget] in
    pick order and, for each pick, (pole index, rank within that pole's own order).
    """
    n = scores_nk.shape[0]
    _check_budget(budget, n)
    quotas = [budget // len(poles) + (1 if i < budget % len(poles) else 0) for i in range(len(poles))]
    directions = sorted({p.direction for p in poles})
    columns = scores_nk[:, directions].T.contiguous()  # [d, N]: one strided pass instead of one per pole
    values = [columns[directions.index(p.direction)] for p in poles]

    def ranking(i: int, depth: int) -> list[int]:
        return top_positions(values[i], depth, largest=poles[i].sign > 0).tolist()

    # Each pole's order is ranked only as deep as needed (twice its quota, deeper on demand): many poles stay cheap.
    ranked = [ranking(i, 2 * q + 8) for i, q in enumerate(quotas)]
    cursor = [0] * len(poles)
    taken: set[int] = set()
    picks: list[int] = []
    reasons: list[tuple[int, int]] = []
    for _ in range(max(quotas)):
        for i, order in enumerate(ranked):
            if quotas[i] == 0:
                continue
            while True:
                if cursor[i] == len(order):  # never past n: budget <= n leaves an untaken example
                    ranked[i] = order = ranking(i, 2 * len(order))
                if order[cursor[i]] not in taken:
                    break
                cursor[i] += 1
            position = order[cursor[i]]
            taken.add(position)
            picks.append(position)
            reasons.append((i, cursor[i]))
            quotas[i] -= 1
    return torch.tensor(picks, dtype=torch.int64), reasons


def ranking_poles(run: ProfileRun, path: str, top: int) -> list[Pole]:
    """The poles of a ranking's `top` best entries, after checking the ranking is this basis's and that this run's
    examples (the pool selected from) are not in the dev set the ranking measured on."""
    ranking = Ranking.load(path)
    ranking.check_basis(run.basis, path)
    dev = set(ranking.dev.get("ids") or ())
    same_file = run.record is not None and same_reading(ranking.dev.get("corpus") or {}, run.record.corpus)
    found = ranking.dev.get("run_overlap", [])  # by `rank` (another file, matched by question); None: not looked for
    if found is None and not same_file:
        warnings.warn(f"{path}: rank could not check that this run's examples are not in its dev set; select from a "
                      "profile of a pool you know to be disjoint from it", stacklevel=2)
    overlap = sorted(set(found or ()) | (dev & set(run.scores.ids) if same_file else set()))
    if overlap:
        raise AutoskillError(f"{run.folder}: {len(overlap)} of its examples (e.g. {overlap[:3]}) are in the dev set "
                             f"{path} was measured on; select from a profile of the pool (--split pool with the same "
                             "--dev-size and --split-seed, or a corpus without the dev set's problems)")
    return [Pole(entry.direction, entry.sign) for entry in ranking.best(top, per="pole")]


def random_order(n: int, budget: int, seed: int) -> torch.Tensor:
    """A seeded uniform sample without replacement, as positions [budget]; nested across budgets for one seed."""
    _check_budget(budget, n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:budget]


def text_vectors(texts: list[str], dim: int, seed: int) -> torch.Tensor:
    """TF-IDF vectors (sublinear tf, unit L2 norm) randomly projected to `dim` dimensions: [N, dim] fp32."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.random_projection import SparseRandomProjection
    except ImportError:
        raise AutoskillError("the text baseline needs scikit-learn: pip install 'autoskill-fast[report]'") from None
    if not any(t.strip() for t in texts):
        raise AutoskillError("the text baseline found no text in the selected corpus rows")
    # Words of two or more characters, as scikit-learn's default; capped vocabulary bounds memory on big corpora.
    try:
        tfidf = TfidfVectorizer(sublinear_tf=True, max_features=1 << 18, dtype=np.float32).fit_transform(texts)
    except ValueError as error:  # "empty vocabulary": no word of two or more characters
        raise AutoskillError(f"the text baseline found no word of two or more characters in the selected corpus rows "
                             f"({error}); use another --method") from None
    if tfidf.shape[1] <= dim:
        return torch.from_numpy(tfidf.toarray()).float()
    projected = SparseRandomProjection(n_components=dim, dense_output=True, random_state=seed).fit_transform(tfidf)
    return torch.from_numpy(projected).float()


def _check_budget(budget: int, n: int) -> None:
    if budget > n:
        raise AutoskillError(f"budget {budget} is larger than the {n} scored examples; lower --budget to at most {n}")
    if budget <= 0:
        raise AutoskillError(f"budget must be positive, got {budget}")


@dataclass
class Selection:
    """What was selected: positions into the run's scores (in pick order) and why each one was picked."""

    positions: torch.Tensor  # [budget] int64
    reasons: list[dict[str, Any]]
    manifest: dict[str, Any] = field(default_factory=dict)


def choose(run: ProfileRun, config: SelectConfig) -> Selection:
    """The selection itself, without reading or writing records (except the text baseline, which reads texts)."""
    n, basis, scores = run.n, run.basis, run.scores
    _check_budget(config.budget, n)
    if config.method == "pole":
        poles = ranking_poles(run, config.ranking, config.top) if config.ranking else parse_poles(config.directions,
                                                                                                 basis.k)
        values = scores.projection if config.by == "projection" else scores.cosine
        positions, picks = pole_order(values, poles, config.budget)
        reasons = []
        for position, (i, rank) in zip(positions.tolist(), picks):
            pole = poles[i]
            reasons.append({"method": "pole", "direction": pole.direction, "pole": pole.name[0],
                            "label": basis.labels[pole.direction], "by": config.by,
                            "score": float(values[position, pole.direction]), "rank": rank})
        return Selection(positions, reasons, {"poles": [p.name for p in poles], "by": config.by})
    if config.method == "coverage":
        dims = config.dims or basis.k
        if dims > basis.k:
            raise AutoskillError(f"--dims {dims} is more than the basis's {basis.k} directions")
        points = scores.projection[:, :dims].float()
        if config.metric == "whitened":  # by the examples' own spread: a sketched basis's eigenvalues are bounds
            std = points.double().std(dim=0, correction=0)
            # Rounding, by the scores' spread or by the basis's eigenvalues: bf16 scores (--features-dtype bfloat16)
            # give a rounding direction bf16's spread, which whitening then made most of the distances.
            eigenvalues = basis.eigenvalues_[:dims].to(torch.float64)
            spread_noise = std <= NOISE_SPREAD * std.max()
            noise = spread_noise | (eigenvalues <= ROUNDING_VARIANCE * eigenvalues[0])
            if noise.any():
                bad = int(noise.nonzero()[0])
                hint = f"; use --dims {bad}" if bad else ""
                why = (f"has no variance in these {n} examples" if std[bad] == 0 else
                       f"varies only {float(std[bad] / std.max()):.1e} as much as the most varying direction in these "
                       f"{n} examples (rounding: more directions than distinct examples?)" if spread_noise[bad] else
                       f"explains at most {ROUNDING_VARIANCE:g} of direction 0's variance in the basis (rounding: "
                       "more directions than distinct examples?)")
                raise AutoskillError(f"direction {bad} {why} and cannot be whitened{hint} (or --metric euclidean)")
            points = (points.double() / std).float()
        positions, distance = farthest_point_order(points, config.budget)
        reasons = [{"method": "coverage", "rank": r, "distance": float(d)} for r, d in enumerate(distance.tolist())]
        return Selection(positions, reasons, {"dims": dims, "metric": config.metric,
                                              "space": f"{config.metric} projection",
                                              "first_distance": float(distance[0]), "last_distance": float(distance[-1])})
    if config.method == "random":
        positions = random_order(n, config.budget, config.seed)
        return Selection(positions, [{"method": "random", "rank": r, "seed": config.seed} for r in range(config.budget)])
    texts = iter_texts(run.corpus_config(config.corpus), scores.row.tolist(), scores.ids)
    vectors = text_vectors(texts, config.text_dim, config.seed)
    positions, distance = farthest_point_order(vectors - vectors.mean(0), config.budget)
    reasons = [{"method": "text", "rank": r, "distance": float(d)} for r, d in enumerate(distance.tolist())]
    return Selection(positions, reasons, {"text_dim": config.text_dim, "space": "tf-idf, random projection"})


def select(config: SelectConfig) -> Selection:
    """Select from a profile run and write the records (JSONL, pick order) and the manifest beside them."""
    t0 = time.perf_counter()
    run = load_run(config.run)
    corpus = run.corpus_config(config.corpus)
    out = Path(config.out)
    run.check_output(out, "--out", corpus)
    selection = choose(run, config)
    t_selected = time.perf_counter()
    ids, rows = run.scores.ids, run.scores.row
    wanted = {int(rows[p]): ids[p] for p in selection.positions.tolist()}
    records = fetch_records(corpus, wanted)

    def annotated():
        for position, reason in zip(selection.positions.tolist(), selection.reasons):
            record = records[int(rows[position])]
            yield _annotated(record.data, {"id": record.id, "row": record.row, **reason})

    save_jsonl(out, annotated())
    t_written = time.perf_counter()
    selection.manifest = {
        "method": config.method,
        "budget": config.budget,
        "seed": config.seed,
        "config": asdict(config),
        "basis": run.basis_fingerprint(),
        "corpus": run.record.corpus if run.record is not None else {"path": corpus.path},
        "counts": {"candidates": run.n, "selected": len(selection.reasons), **_per_pole_counts(selection)},
        **selection.manifest,
        "output": str(out),
        "timings": {"select_s": t_selected - t0, "write_s": t_written - t_selected},
    }
    save_json(manifest_path(out), selection.manifest)
    return selection


def manifest_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".manifest.json")


def _annotated(data: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The record with `_autoskill` added; an earlier selection's annotation is kept under `previous`."""
    if ADDED_KEY in data:
        info = {**info, "previous": data[ADDED_KEY]}
    return {**data, ADDED_KEY: info}


def _per_pole_counts(selection: Selection) -> dict[str, Any]:
    if not selection.reasons or selection.reasons[0]["method"] != "pole":
        return {}
    counts: dict[str, int] = {}
    for reason in selection.reasons:
        key = f"{reason['pole']}{reason['direction']}"
        counts[key] = counts.get(key, 0) + 1
    return {"per_pole": counts}

