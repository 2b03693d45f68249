"""run.json: the record of one run, versioned, written and read only here.

Schema 2 (this version) holds: `schema`, `status` ("running" from the start of a profile, "statistics" once the
statistics are saved but no basis was fitted, "complete"), `key` (what makes two runs the same run: the config that
changes the statistics, the model and corpus fingerprints; every artifact of the folder carries it), `kind` ("profile"
or "merge"), the resolved `config`, the `model` and `corpus` fingerprints, the `pooling` record and the feature
`layout`, `environment` (model path, dtype, device, world size), `counts`, `skipped` ids, `timings`, the `basis`
summary, the pilot `layer_scale`, `error` (why a fit failed), for merges `merged_from` and `complete_shards`, and `created_schema`.
Schema 1 files (no `schema` entry; written before the run folder had an owner) are read and converted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..config import CorpusConfig
from ..errors import AutoskillError

SCHEMA = 2
Status = Literal["running", "statistics", "complete"]
Kind = Literal["profile", "merge"]
_BATCHING_KEYS = ("token_budget", "max_batch_size", "sort_window", "padding_side")
_ENVIRONMENT_KEYS = ("model_path", "dtype", "device")


@dataclass
class RunRecord:
    """What run.json says (see the module docstring)."""

    status: Status
    key: str
    config: dict[str, Any]
    model: dict[str, Any]
    corpus: dict[str, Any]
    pooling: dict[str, Any]
    layout: dict[str, Any]
    kind: Kind = "profile"
    environment: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    basis: dict[str, Any] | None = None
    layer_scale: list[float] | None = None
    """The per-layer factors of "pilot" layer scaling, fixed from the first batch."""
    error: str | None = None
    merged_from: list[str] = field(default_factory=list)
    complete_shards: bool | None = None
    created_schema: int = SCHEMA
    """The schema the folder was first written with: artifacts of a schema-1 folder carry no run key."""
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {"schema": data.pop("schema"), **data}

    @property
    def corpus_config(self) -> dict[str, Any]:
        return self.config.get("corpus") or {}

    def corpus_reading(self, **changes: Any) -> CorpusConfig:
        """How the profile read its corpus, as a CorpusConfig: the recorded options it takes (a record of another
        version may hold others), with `changes` (e.g. another path). The path is the file profiled, resolved when it
        was fingerprinted, while it is there: the path as typed may be relative to another directory (then another
        file of that name, or none, was read); the typed one where the file has moved away."""
        names = {f.name for f in fields(CorpusConfig)}
        recorded = {k: v for k, v in self.corpus_config.items() if k in names}
        profiled = self.corpus.get("path")
        if profiled and Path(profiled).exists():
            recorded["path"] = profiled
        return CorpusConfig(**{**recorded, **changes})

    @classmethod
    def from_json(cls, data: Any, source: str | Path) -> "RunRecord":
        """Validate and read a run.json (either schema); errors name the file and the field."""
        if not isinstance(data, dict):
            raise AutoskillError(f"{source}: expected a JSON object, got {type(data).__name__}; this is not a run.json "
                                 "of autoskill-fast")
        schema = data.get("schema", 1)
        if schema == 1:
            data = _from_schema_1(data)
        elif schema != SCHEMA:
            raise AutoskillError(f"{source}: run.json schema {schema!r} is not one this version reads (1 or {SCHEMA}); "
                                 "upgrade autoskill-fast or profile again")
        expected = {"status": str, "key": str, "config": dict, "model": dict, "corpus": dict, "pooling": dict,
                    "layout": dict, "kind": str, "environment": dict, "counts": dict, "skipped": list, "timings": dict,
                    "basis": (dict, type(None)), "layer_scale": (list, type(None)), "error": (str, type(None)), "merged_from": list,
                    "complete_shards": (bool, type(None)), "created_schema": int, "schema": int}
        names = {f.name for f in fields(cls)}
        values = {}
        for name in names:
            if name not in data:
                if name in ("status", "key", "config", "model", "corpus", "pooling", "layout"):
                    raise AutoskillError(f"{source}: missing field {name!r}; the file is corrupted or not a run.json "
                                         "of autoskill-fast")
                continue
            if not isinstance(data[name], expected[name]):
                raise AutoskillError(f"{source}: field {name!r} is {type(data[name]).__name__}, not what run.json "
                                     "holds there; the file is corrupted or not a run.json of autoskill-fast")
            values[name] = data[name]
        if values["status"] not in ("running", "statistics", "complete"):
            raise AutoskillError(f"{source}: field 'status' is {values['status']!r}; expected running, statistics or "
                                 "complete")
        for name in ("corpus", "model"):
            if not isinstance(values["config"].get(name, {}), dict):
                raise AutoskillError(f"{source}: field 'config.{name}' is not an object; the file is corrupted")
        return cls(**{**values, "schema": SCHEMA})


def _from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 run.json (profile runs and merges of version 0.1) in schema 2's shape."""
    data = dict(data, created_schema=1)
    config = dict(data.get("config") or {})
    if not isinstance(config.get("batching"), dict):
        config["batching"] = {k: config.pop(k) for k in _BATCHING_KEYS if k in config}
    data["config"] = config
    data.setdefault("key", "schema-1:" + str(data.get("corpus", {}).get("sha256", "?")))
    data["environment"] = {k: data.pop(k) for k in _ENVIRONMENT_KEYS if k in data}
    data["kind"] = "merge" if data.get("merged_from") else "profile"
    for name, default in (("pooling", {}), ("layout", {}), ("model", {}), ("corpus", {})):
        if data.get(name) is None:
            data[name] = default
    return data
