"""ranking.json: which directions of a run's basis help, by how much, with which sign (written by `rank`, read by
`select --ranking` and `steer --ranking`, shown by `inspect`).

Each entry is one (direction, sign[, alpha]) with its effect (larger is better: a Pass@k gain, an NLL drop, an
AUROC above one half, ...), its own 95% interval, a joint 95% interval (all entries' joint intervals hold their
effects at once), the statistic it is, the evaluation it came from and its cost in seconds. Entries are sorted best
first. The ranking records the basis it ranked (its run key) and the dev set its numbers were measured on, so that
data selected from a pool that overlaps that dev set can be refused.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import load_json, save_json
from ..basis import SkillBasis
from ..errors import AutoskillError

RANKING_JSON = "ranking.json"
SCHEMA = 1


def alpha_label(alpha: float) -> str:
    """A steering strength as text: short where %g is exact ("0.5", "2"), else in full (0.1234567 and 0.1234568 are
    two strengths)."""
    short = f"{alpha:g}"
    return short if float(short) == alpha else repr(alpha)


@dataclass
class RankingEntry:
    direction: int
    sign: int  # +1: the direction's positive pole (steering towards it), -1: its negative pole
    effect: float
    low: float
    high: float
    statistic: str  # what `effect` is, e.g. "pass@1 difference", "AUROC - 0.5", "NLL drop (nats/token)"
    evaluation: str = ""  # where the numbers came from (a folder, or a description)
    cost_s: float = 0.0
    alpha: float | None = None  # steering strength (steer proxy)
    alpha_unit: str | None = None  # "norm" (on the unit-norm direction) or "std" (the direction's standard deviations)
    details: dict[str, Any] = field(default_factory=dict)
    # The joint 95% interval: with the other entries' joint intervals it holds every entry's effect at once in about
    # 95% of experiments, so it covers picking the best of them; never narrower than the own [low, high]. None in
    # rankings written before joint intervals.
    joint_low: float | None = None
    joint_high: float | None = None

    @property
    def pole(self) -> str:
        return f"{'+' if self.sign > 0 else '-'}{self.direction}"

    @property
    def significant(self) -> bool:
        """The whole interval lies above zero."""
        return self.low > 0

    @property
    def jointly_significant(self) -> bool | None:
        """The whole joint interval lies above zero: this entry helps even allowing for the others tested (None when
        the ranking has no joint intervals)."""
        return None if self.joint_low is None else self.joint_low > 0


@dataclass
class Ranking:
    proxy: str
    metric: str
    run_key: str | None
    entries: list[RankingEntry]
    config: dict[str, Any] = field(default_factory=dict)
    # {"ids": [...], "corpus": ..., "dev_size", "split_seed", "run_overlap": the run's ids in it (None: unchecked)}
    dev: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    basis_digest: str | None = None  # the basis ranked (`SkillBasis.digest`): a refit of the run is not it

    def __post_init__(self):
        self.entries = sorted(self.entries, key=lambda e: (-e.effect, e.direction, -e.sign))

    def check_basis(self, basis: SkillBasis, path: str | Path) -> None:
        """Refuse to use this ranking (read from `path`) with a basis it did not rank."""
        if self.run_key is not None and basis.run_key is not None and self.run_key != basis.run_key:
            raise AutoskillError(f"{path}: ranks the basis of another run ({self.run_key}), not this one's "
                                 f"({basis.run_key}); rank this run first")
        if self.basis_digest is not None and self.basis_digest != basis.digest():
            raise AutoskillError(f"{path}: ranks this run's basis as it was before a refit (`fit`); rerun "
                                 "`autoskill-fast rank` on the refitted run")
        beyond = sorted({e.pole for e in self.entries if e.direction >= basis.k})
        if beyond:
            raise AutoskillError(f"{path}: ranks directions {beyond} but the basis has {basis.k}; rerun "
                                 "`autoskill-fast rank`")

    @property
    def joint(self) -> bool:
        """Whether the entries carry joint intervals (rankings written before them do not)."""
        return bool(self.entries) and all(e.joint_low is not None for e in self.entries)

    @property
    def multiplicity_note(self) -> str:
        """What the per-entry intervals do not say, and what the joint ones do."""
        n = len(self.entries)
        chance = (f"each 95% interval is this entry's own: with no real effect anywhere, about {0.025 * n:.1f} of the "
                  f"{n} would still lie above zero by chance (2.5% each)")
        if not self.joint:
            return f"{chance}; confirm a winner on other problems before trusting it"
        false = ("about 5% (a miss on either side puts one of a direction's two poles above zero)"
                 if self.proxy == "correlation" else "about 2.5%")
        return (f"{chance}; the joint intervals hold all {n} effects at once in about 95% of experiments, so with no "
                f"real effect anywhere, one of them lies above zero in {false} (bench/RESULTS.md)")

    def best(self, top: int, *, per: str = "pole") -> list[RankingEntry]:
        """The best entry of each of the `top` best poles (per="pole": select takes both ends of a direction if both
        rank high) or directions (per="direction": steer, where the two ends of one direction would cancel), best
        first. A steer ranking holds one entry per (pole, alpha): its pole's best alpha is the one taken. A warning
        for each whose interval does not lie above zero (it is used as asked, but nothing says it helps: every
        direction of a ranking may hurt)."""
        if top < 1:
            raise AutoskillError(f"--top must be positive, got {top}")
        if per not in ("pole", "direction"):
            raise ValueError(f"per must be 'pole' or 'direction', got {per!r}")
        chosen: dict[Any, RankingEntry] = {}
        for entry in self.entries:
            chosen.setdefault(entry.pole if per == "pole" else entry.direction, entry)
        if top > len(chosen):
            raise AutoskillError(f"--top {top}: this {self.proxy} ranking holds {len(chosen)} {per}s "
                                 f"({', '.join(e.pole for e in chosen.values())}); lower --top to at most {len(chosen)}")
        chosen = list(chosen.values())[:top]
        for entry in chosen:
            if not entry.significant:
                verdict = "hurts" if entry.high < 0 else "is not told apart from no effect"
                warnings.warn(f"{entry.pole} ({self.proxy} proxy) {verdict}: {entry.statistic} {entry.effect:+.4g} "
                              f"[{entry.low:+.4g}, {entry.high:+.4g}]; used as asked", stacklevel=2)
            elif entry.jointly_significant is False:
                warnings.warn(f"{entry.pole} ({self.proxy} proxy) helps on its own interval, {entry.statistic} "
                              f"{entry.effect:+.4g} [{entry.low:+.4g}, {entry.high:+.4g}], but not on the joint one "
                              f"[{entry.joint_low:+.4g}, {entry.joint_high:+.4g}] that allows for the "
                              f"{len(self.entries)} entries tested: it may be the luck of the best of them; used as "
                              "asked", stacklevel=2)
        return chosen

    def save(self, folder: str | Path) -> Path:
        data = {"schema": SCHEMA, **asdict(self)}
        save_json(Path(folder) / RANKING_JSON, data)
        return Path(folder) / RANKING_JSON

    @classmethod
    def load(cls, path: str | Path) -> "Ranking":
        path = Path(path)
        if path.is_dir():
            path = path / RANKING_JSON
        if not path.is_file():
            raise AutoskillError(f"{path}: no ranking; run `autoskill-fast rank` on the run first")
        data = load_json(path)
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise AutoskillError(f"{path}: not a ranking.json of this version (schema {SCHEMA}); rerun `autoskill-fast "
                                 "rank`")
        try:
            entries = [RankingEntry(**entry) for entry in data["entries"]]
            return cls(data["proxy"], data["metric"], data.get("run_key"), entries, data.get("config") or {},
                       data.get("dev") or {}, data.get("baseline") or {}, data.get("notes") or [],
                       data.get("basis_digest"))
        except (KeyError, TypeError) as e:
            raise AutoskillError(f"{path}: malformed ranking ({e}); rerun `autoskill-fast rank`") from None
