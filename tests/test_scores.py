"""Scores written without holding them all: ScoreWriter parts, then write_scores in corpus row order."""

from __future__ import annotations

import json
import random

import pytest
import torch

from autoskill_fast.basis import SkillBasis
from autoskill_fast.capture.layout import FeatureLayout
from autoskill_fast.decomposition.components import PrincipalComponents
from autoskill_fast.errors import AutoskillError
from autoskill_fast.run import scores as scores_mod
from autoskill_fast.run.scores import SCORE_PARTS_DIR, ScoreWriter, Scores, save_scores, write_scores


def random_basis(dim: int, k: int, seed: int) -> SkillBasis:
    gen = torch.Generator().manual_seed(seed)
    components = torch.linalg.qr(torch.randn(dim, k, generator=gen, dtype=torch.float64)).Q.T.float()
    pca = PrincipalComponents(components, torch.linspace(3, 1, k, dtype=torch.float64),
                              torch.randn(dim, generator=gen, dtype=torch.float64), 100, 10.0)
    return SkillBasis(pca, FeatureLayout((0,), dim), model={"name": "m"}, pooling={"mode": "mean"}, run_key="key")


def awkward_pieces(n: int, seed: int) -> list[int]:
    rng, sizes = random.Random(seed), []
    while sum(sizes) < n:
        sizes.append(min(rng.choice([1, 2, 3, 7, 31, 64]), n - sum(sizes)))
    return sizes


def random_ids(n: int, seed: int) -> list[str]:
    """Ids JSON and UTF-8 must both carry: quotes, backslashes, newlines, accents, emoji, an empty id."""
    rng = random.Random(seed)
    alphabet = ['a', 'Z', '0', '"', '\\\\', '\\n', 'é', '中', '🙂', ' ', '/']
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0 if i == 3 else 1, 6))) + f"#{i}"
            for i in range(n)]


@pytest.mark.parametrize("n_writers", [1, 3])
def test_streamed_scores_equal_the_in_memory_ones(tmp_path, monkeypatch, n_writers):
    """Rows in any order, in pieces of awkward sizes, through several writers (the ranks of a torchrun job) and many
    small parts and blocks: the files equal the scores computed in memory and sorted by row."""
    monkeypatch.setattr(scores_mod, "PART_ROWS", 40)  # a part every few pieces
    monkeypatch.setattr(scores_mod, "PART_BYTES", 2000)  # or sooner
    monkeypatch.setattr(scores_mod, "BLOCK_ROWS", 13)
    n, dim, k = 301, 19, 5
    basis = random_basis(dim, k, seed=n_writers)
    features = torch.randn(n, dim, generator=torch.Generator().manual_seed(7)) * 3
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(8)) * 2 + 5  # not 0..n-1: corpus rows
    ids = random_ids(n, seed=9)
    writers = [ScoreWriter(tmp_path, basis, prefix=f"r{w}-" if n_writers > 1 else "") for w in range(n_writers)]
    start = 0
    for piece, size in enumerate(awkward_pieces(n, seed=10)):
        writers[piece % n_writers].add(features[start:start + size], rows[start:start + size],
                                       ids[start:start + size])
        start += size
    parts = [p for w in writers for p in w.close()]
    assert len(parts) > 5
    assert write_scores(tmp_path, parts, k=k, run_key="key", basis_digest=basis.digest()) == n

    scores = Scores.load(tmp_path)
    order = torch.argsort(rows)
    assert scores.ids == [ids[i] for i in order.tolist()] and torch.equal(scores.row, rows[order])
    # Computed a piece at a time, they round as their pieces do: fp32 rounding, not a row out of place (which would
    # differ by the scores' whole size).
    torch.testing.assert_close(scores.projection, basis.project(features)[order], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(scores.cosine, basis.cosine(features)[order], rtol=1e-6, atol=1e-7)
    assert (scores.k, scores.run_key, scores.basis_digest) == (k, "key", basis.digest())
    assert json.loads((tmp_path / "scores.json").read_text(encoding="utf-8"))["n"] == n
    assert not (tmp_path / SCORE_PARTS_DIR).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json", "scores.safetensors"]  # no temporary file


def test_a_writer_drops_its_own_stale_parts_and_no_other(tmp_path):
    basis = random_basis(6, 2, seed=0)
    killed = ScoreWriter(tmp_path, basis, prefix="r1-")
    killed.add(torch.randn(4, 6), torch.arange(4), list("abcd"))
    other = ScoreWriter(tmp_path, basis, prefix="r0-")
    other.add(torch.randn(2, 6), torch.arange(4, 6), list("ef"))
    stale, kept = killed.close(), other.close()
    again = ScoreWriter(tmp_path, basis, prefix="r1-")  # the rerun of rank 1
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    again.add(torch.randn(1, 6), torch.tensor([9]), ["g"])
    assert write_scores(tmp_path, kept + again.close(), k=2, run_key=None, basis_digest=None) == 3
    assert Scores.load(tmp_path).ids == ["e", "f", "g"]


def test_no_rows(tmp_path):
    basis = random_basis(6, 2, seed=0)
    with pytest.raises(AutoskillError, match="no features to score"):
        save_scores(tmp_path / "a", basis, iter([]))
    assert save_scores(tmp_path / "b", basis, iter([]), allow_empty=True) == 0
    empty = Scores.load(tmp_path / "b")
    assert empty.ids == [] and empty.projection.shape == (0, 2) and empty.row.shape == (0,)


@pytest.mark.parametrize("name", ["projection", "cosine"])
def test_a_non_finite_score_is_refused_naming_its_example(tmp_path, name):
    gen = torch.Generator().manual_seed(3)
    tensors = {"projection": torch.randn(5, 3, generator=gen), "cosine": torch.rand(5, 3, generator=gen)}
    tensors[name][3, 2] = float("nan")
    Scores(["a", "b", "c", "d", "e"], torch.arange(5), tensors["projection"], tensors["cosine"]).save(tmp_path)
    with pytest.raises(AutoskillError, match=f"a non-finite {name} score for example 'd'; the file is corrupted"):
        Scores.load(tmp_path)


def test_a_kill_while_writing_leaves_the_old_scores(tmp_path, monkeypatch):
    basis = random_basis(6, 2, seed=0)
    shards = [(torch.randn(5, 6), torch.arange(5), list("abcde"))]
    save_scores(tmp_path, basis, iter(shards))
    before = Scores.load(tmp_path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scores_mod, "_read_block", killed)
    with pytest.raises(KeyboardInterrupt):
        save_scores(tmp_path, basis, iter([(torch.randn(3, 6), torch.arange(3), list("xyz"))]))
    after = Scores.load(tmp_path)
    assert after.ids == before.ids and torch.equal(after.projection, before.projection)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
