"""The `project` job: a corpus scored against an existing basis, with the basis's own model check and pooling.

Features are pooled a batch at a time and projected straight away (nothing of size N x D is kept), so a corpus of any
size can be scored; the scores go to `scores.safetensors` / `scores.json` with a `project.json` record.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..artifacts import save_json
from ..capture.features import PooledBatches, resolve_pooling
from ..capture.layout import check_same_pooling, pooling_record
from ..capture.models import LoadedModel, load_model
from ..config import ProjectConfig
from ..data.corpus import fingerprint as corpus_fingerprint
from ..data.stream import InputTally, iter_tokenized
from ..errors import AutoskillError
from ..progress import Progress
from ..run.folder import load_basis
from ..run.scores import Scores

PROJECT_JSON = "project.json"


def project(config: ProjectConfig, *, loaded: LoadedModel | None = None) -> Scores:
    """Scores of a corpus against an existing basis (same model and pooling required); written to config.out."""
    t0 = time.perf_counter()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise AutoskillError(f"{out}: is a file, not a folder; choose another output folder")
    basis = load_basis(config.basis)
    loaded = loaded or load_model(config.model)
    basis.check_model(loaded.fingerprint, what="corpus features")
    pooling = basis.pooling_config
    if config.pooling is not None:  # options given must describe the basis's pooling
        layout = resolve_pooling(config.pooling, loaded.model, loaded.tokenizer).layout
        check_same_pooling(basis.pooling, pooling_record(config.pooling, layout, loaded.tokenizer, None),
                           what="pooling options given")
    resolved = resolve_pooling(pooling, loaded.model, loaded.tokenizer)
    if resolved.layout != basis.layout:
        raise AutoskillError(f"the basis uses blocks {list(basis.layout.layer_ids)} of hidden size "
                             f"{basis.layout.hidden_size}; this model gives {list(resolved.layout.layer_ids)} of "
                             f"{resolved.layout.hidden_size}")
    tally = InputTally()
    items = iter_tokenized(config.corpus, loaded.tokenizer, resolved.config, tally,
                           on_bad_example=config.on_bad_example)
    pooled = PooledBatches(loaded.model, loaded.tokenizer, items, resolved, config.batching, tally,
                           layer_scale=basis.layer_scale, on_bad_example=config.on_bad_example,
                           context=f"model {loaded.name}")
    bar = Progress(disable=config.quiet, desc="project")

    def shards():
        for features, batch in pooled:
            bar.update(len(batch), batch.n_tokens)
            yield features, batch.rows, batch.ids

    try:
        scores = Scores.from_features(basis, shards())
    finally:
        bar.close()
    scores.save(out)
    save_json(out / PROJECT_JSON, {"basis": str(Path(config.basis).resolve()), "basis_run_key": basis.run_key,
                                   "config": config.to_json(), "corpus": corpus_fingerprint(config.corpus),
                                   "n": len(scores.ids), "truncated": tally.truncated, "skipped": tally.skipped,
                                   "seconds": time.perf_counter() - t0})
    return scores
