"""The run folder: its file names, who owns it, and reading its artifacts back only as part of their own run.

    run.json            the record (`record.RunRecord`), written first (status "running") so the folder is claimed
    stats.safetensors   count, shift, sums: enough to refit or merge
    basis.safetensors + basis.json
    scores.safetensors + scores.json
    features/           pooled features, with --save-features
    checkpoint/         statistics and position of an unfinished run
    report.html, ranking.json

Every artifact carries the run's key (`basis.json`'s `run_key`, the `run_key` metadata of each safetensors file, the
checkpoint's progress), and is read back only when its key is the folder's: a file left over from another run is an
error, never silently part of this one. A folder holding another run is refused unless the caller asks to overwrite
it, which removes that run's files (and only those).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ..artifacts import load_json, save_json
from ..basis import BASIS_JSON, BASIS_TENSORS, SkillBasis
from ..errors import AutoskillError
from .record import RunRecord
from .scores import SCORE_PARTS_DIR, SCORES_JSON, SCORES_TENSORS, Scores

RUN_JSON = "run.json"
STATS_FILE = "stats.safetensors"
FEATURES_DIR = "features"
TEMP_FEATURES_DIR = ".features-tmp"
CHECKPOINT_DIR = "checkpoint"
REPORT_HTML = "report.html"
RUN_FILES = (RUN_JSON, STATS_FILE, BASIS_TENSORS, BASIS_JSON, SCORES_TENSORS, SCORES_JSON, REPORT_HTML)
RUN_DIRS = (FEATURES_DIR, TEMP_FEATURES_DIR, CHECKPOINT_DIR, SCORE_PARTS_DIR)
KEY_METADATA = "run_key"  # the safetensors metadata entry that holds the run key


def file_key(path: Path) -> str | None:
    """The run key in a safetensors file's metadata (None when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(KEY_METADATA)
    except Exception as e:  # safetensors raises its own kinds for a truncated or garbled header
        raise AutoskillError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); it is damaged: "
                             "rerun the command that wrote it") from None


def basis_summary(basis: SkillBasis) -> dict[str, Any]:
    """What run.json says of the basis."""
    return {"k": basis.k, "scaling": basis.scaling, "solver": basis.solver,
            "explained_variance_ratio": basis.explained_variance_ratio_.tolist(), "warnings": basis.warnings}


class RunFolder:
    """One run's folder (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise AutoskillError(f"{self.path}: is a file, not a folder; choose another output folder")

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ---- the record ------------------------------------------------------------------------------------------------
    def has_record(self) -> bool:
        return (self.path / RUN_JSON).is_file()

    def record(self) -> RunRecord:
        if not self.has_record():
            raise AutoskillError(f"{self.path}: no {RUN_JSON}; this is not the output folder of a profile run")
        return RunRecord.from_json(load_json(self.path / RUN_JSON), self.path / RUN_JSON)

    def write_record(self, record: RunRecord) -> None:
        save_json(self.path / RUN_JSON, record.to_json())

    def holds_results(self) -> bool:
        """Whether anything computed is here: statistics, a basis, scores, features or a checkpoint."""
        files = any((self.path / name).exists() for name in RUN_FILES if name != RUN_JSON)
        return files or any(p.is_file() for name in RUN_DIRS for p in (self.path / name).rglob("*"))

    def has_run_files(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES + RUN_DIRS)

    def claim(self, key: str, *, overwrite: bool, describe: str, config: dict[str, Any] | None = None
              ) -> RunRecord | None:
        """Make sure this folder may hold the run with `key`: returns its record when it already holds that run (to
        resume or complete it), None when it holds no run. A folder holding another run is refused. `overwrite` removes
        the run's files first, whichever run they are of. `describe` says what the new run is, and `config` (a
        ProfileConfig as JSON) how, for the message."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.has_record():
            try:
                record = self.record()
            except AutoskillError:
                if not overwrite:
                    raise
                record = None
            if record is not None and record.key == key and not overwrite:
                return record
            if record is not None and record.status == "running" and not self.holds_results():
                overwrite = True  # a run that stopped before computing anything: nothing of value to protect
            if not overwrite:
                held = (f"a run of model {record.model.get('name')!r} on {Path(record.corpus.get('path', '?')).name}"
                        if record is not None else "another run")
                difference = None if record is None or config is None else config_difference(record.config, config)
                how = (f"with another {difference}" if difference else
                       "with other options, model weights or corpus content (or made by an earlier version with other "
                       "defaults)")
                raise AutoskillError(f"{self.path}: holds {held} {how}, not {describe}; choose another output folder, "
                                     "or pass --overwrite to replace that run")
        elif self.has_run_files():
            progress = self.path / CHECKPOINT_DIR / "progress.json"
            if not overwrite and progress.is_file() and load_json(progress).get("key") == key:
                return None  # a checkpoint of this run, written before run.json existed
            if not overwrite:
                raise AutoskillError(f"{self.path}: holds files of another run (no {RUN_JSON} says which); choose "
                                     "another output folder, or pass --overwrite to replace them")
        if overwrite:
            self.clear()
        return None

    def clear(self) -> None:
        """Remove this run's files (nothing else in the folder)."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    # ---- artifacts, read back only as part of this run ---------------------------------------------------------------
    def check_key(self, path: Path, key: str | None, record: RunRecord) -> None:
        """Refuse an artifact written by another run than the folder's."""
        if key == record.key or (key is None and record.created_schema == 1):
            return
        found = f"the run key {key!r}" if key else "no run key"
        raise AutoskillError(f"{path}: has {found} but {self.path / RUN_JSON} is run {record.key!r}: the file is left "
                             "over from another run; rerun the profile (with --overwrite) to rebuild the folder")

    def stats_path(self, record: RunRecord) -> Path:
        path = self.path / STATS_FILE
        if not path.is_file():
            raise AutoskillError(f"{path}: file not found; the run's statistics are missing (rerun its profile command)")
        self.check_key(path, file_key(path), record)
        return path

    def basis(self, record: RunRecord | None = None) -> SkillBasis:
        basis = SkillBasis.load(self.path)
        if record is not None:
            self.check_key(self.path / BASIS_JSON, basis.run_key, record)
        return basis

    def scores(self, record: RunRecord | None = None) -> Scores:
        scores = Scores.load(self.path)
        if record is not None:
            self.check_key(self.path / SCORES_JSON, scores.run_key, record)
        return scores

    def feature_dir(self, record: RunRecord, *, temporary: bool = False) -> Path | None:
        """The saved features of this run (None when it saved none), or with `temporary` those kept only until the
        scores are written; every shard must carry the run's key."""
        folder = self.path / (TEMP_FEATURES_DIR if temporary else FEATURES_DIR)
        shards = sorted(folder.glob("shard-*.safetensors"))
        for shard in shards:
            self.check_key(shard, file_key(shard), record)
        return folder if shards else None

    def key_metadata(self, key: str) -> dict[str, str]:
        return {KEY_METADATA: key}

    def remove_scores(self) -> None:
        for name in (SCORES_TENSORS, SCORES_JSON):
            (self.path / name).unlink(missing_ok=True)


def load_basis(folder: str | Path) -> SkillBasis:
    """A basis from a run folder (checked to belong to the folder's run) or from a bare basis folder."""
    run = RunFolder(folder)
    return run.basis(run.record()) if run.has_record() else SkillBasis.load(folder)


def run_key(config: dict[str, Any], model: dict[str, Any], corpus: dict[str, Any], *, legacy: bool = False) -> str:
    """What makes two runs the same run: everything that changes the statistics (not k, output options or the device).
    `config` is a ProfileConfig as JSON. `legacy`: the key of versions that keyed on --on-bad-example too (`run_key_of`
    resumes their runs)."""
    blob = json.dumps({"config": _keyed(config, legacy=legacy), "model": model, "corpus": corpus}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def run_key_of(config: dict[str, Any], model: dict[str, Any], corpus: dict[str, Any],
               record: RunRecord | None) -> str:
    """The key of the run `config` makes: the folder's recorded one when that is this run keyed by an earlier version,
    which keyed on --on-bad-example as well (the policy changes nothing until an example is bad, and an "error" run
    stops there: its statistics are those a "skip" run has up to that point), so a run stopped by a bad example
    resumes with --on-bad-example skip instead of starting over."""
    key = run_key(config, model, corpus)
    if record is not None and record.key != key:
        for policy in ("error", "skip"):  # the one it began with: run.json holds the latest, which may be another
            if run_key({**config, "on_bad_example": policy}, model, corpus, legacy=True) == record.key:
                return record.key
    return key


def config_difference(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first option that makes two ProfileConfigs (as JSON) other runs: "name: before vs now", or None."""
    def first(a: Any, b: Any, name: str) -> str | None:
        if isinstance(a, dict) and isinstance(b, dict):
            return next((found for key in sorted(set(a) | set(b))
                         if (found := first(a.get(key), b.get(key), f"{name}.{key}" if name else key))), None)
        if isinstance(a, dict) or isinstance(b, dict):
            return None  # a group of options one side does not have: a record of an earlier version
        return None if a == b else f"{name}: {a!r} vs {b!r}"

    return first(_keyed(before), _keyed(now), "")


def _keyed(config: dict[str, Any], *, legacy: bool = False) -> dict[str, Any]:
    """The part of a ProfileConfig (as JSON) that makes a run what it is."""
    cfg = json.loads(json.dumps(config, default=str))
    for volatile in ("out", "quiet", "checkpoint_every", "checkpoint_seconds", "k", "eig_tol", "scores", "save_features",
                     "overwrite", "scaling") + (() if legacy else ("on_bad_example",)):
        cfg.pop(volatile, None)
    cfg["model"].pop("device", None)
    if "prefetch" in cfg.get("batching", {}):  # how far ahead batches are prepared: the same batches (keyed as the
        cfg["batching"]["prefetch"] = 0  # default, 0, which runs begun before this with --prefetch 0 were keyed with)
    if cfg.get("covariance_rows") == "float32":
        del cfg["covariance_rows"]  # the default: runs begun before the option existed keep their key (and resume)
    return cfg


def describe_run(config: dict[str, Any]) -> str:
    """A short description of a profile's config, for messages."""
    model = (config.get("model") or {}).get("model") or "the default model"
    corpus = Path((config.get("corpus") or {}).get("path") or "the default corpus").name
    return f"a run of {Path(str(model)).name} on {corpus}"
