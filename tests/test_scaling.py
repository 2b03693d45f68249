"""Fit-time feature scaling and the diagnostics of what each direction is made of (issue 13)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autoskill_fast.basis import SkillBasis, diagnose, feature_scale
from autoskill_fast.capture.layout import FeatureLayout
from autoskill_fast.cli import cli
from autoskill_fast.decomposition.components import fit_components
from autoskill_fast.decomposition.statistics import StreamingCovariance, load_statistics
from autoskill_fast.run.features import iter_feature_shards
from autoskill_fast.steering import SteeringVector
from model_fixtures import write_jsonl
from test_profile import make_texts

LAYOUT = FeatureLayout((3, 4), 8)  # two blocks of hidden size 8: D = 16


def planted(n=400, seed=0):
    """Two clusters split along a spread direction of moderate variance, plus hidden coordinate 5 (in both blocks)
    with a variance 400 times the rest: an outlier activation that carries no cluster information."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    x = rng.normal(size=(n, 16))
    split = np.zeros(16)
    split[[0, 1, 2, 8, 9, 10]] = 1.0
    x += np.where(labels, 1.5, -1.5)[:, None] * split / np.linalg.norm(split) * 2.0
    x[:, [5, 13]] = rng.normal(size=(n, 1)) * 20.0 + rng.normal(size=(n, 2))
    x += 50.0  # an offset the centering removes
    return torch.from_numpy(x), labels


def fitted(x, scaling):
    stats = StreamingCovariance(16)
    stats.update(x)
    variances = stats.variances()
    pca = fit_components(stats, 3, scale=feature_scale(variances, scaling, LAYOUT))
    basis = SkillBasis(pca, LAYOUT, scaling=scaling)
    basis.diagnostics = diagnose(basis, variances)
    return basis


def auroc(score, labels):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(labels, score)


def test_an_outlier_coordinate_takes_direction_0_unscaled_and_is_flagged():
    x, labels = planted()
    plain = fitted(x, "none")
    first = plain.diagnostics["directions"][0]
    assert first["coordinate"] == 5 and first["concentration"] > 0.95 and first["coordinate_layers"] == [3, 4]
    assert plain.warnings and plain.warnings[0].startswith("direction 0 is") and "hidden coordinate 5 (blocks 3-4)" \
        in plain.warnings[0] and "refit with --scaling coordinate" in plain.warnings[0]
    assert plain.diagnostics["coordinate_variance"]["largest"][0][0] == 5
    assert plain.diagnostics["coordinate_variance"]["largest"][0][1] > 100
    weights = first["layer_weights"]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1.0)
    assert max(abs(auroc(plain.project(x)[:, 0].numpy(), labels) - 0.5), 0) < 0.1  # not the clusters

    standardized = fitted(x, "coordinate")
    assert abs(auroc(standardized.project(x)[:, 0].numpy(), labels) - 0.5) > 0.45  # direction 0 is the split
    assert standardized.diagnostics["directions"][0]["concentration"] < 0.5
    # Standardized, the outlier's two (correlated) layers still make one direction of variance ~2: flagged, later.
    assert not any(w.startswith("direction 0 ") for w in standardized.warnings)


@pytest.mark.parametrize("scaling", ["layer", "coordinate"])
def test_scaled_pca_equals_pca_of_the_scaled_features(scaling):
    from sklearn.decomposition import PCA

    x, _ = planted(seed=1)
    basis = fitted(x, scaling)
    xs = x.numpy()
    if scaling == "coordinate":
        scale = 1 / xs.std(axis=0, ddof=1)
    else:
        scale = np.concatenate([np.full(8, 1 / np.sqrt(xs[:, j * 8:(j + 1) * 8].var(axis=0, ddof=1).sum()))
                                for j in range(2)])
    np.testing.assert_allclose(basis.pca.scale.numpy(), scale, rtol=1e-10)
    reference = PCA(n_components=3, svd_solver="full").fit(xs * scale)
    np.testing.assert_allclose(basis.eigenvalues_.numpy(), reference.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(basis.explained_variance_ratio_.numpy(), reference.explained_variance_ratio_, rtol=1e-6)
    signs = np.sign((basis.components_.double().numpy() * reference.components_).sum(1))
    np.testing.assert_allclose(basis.components_.double().numpy(), reference.components_ * signs[:, None], atol=1e-5)
    # Projections, the paper's cosine and the way back all go through the scale.
    projected = reference.transform(xs * scale) * signs
    np.testing.assert_allclose(basis.project(x).double().numpy(), projected, atol=1e-4 * np.abs(projected).max())
    cos = (xs * scale) @ basis.components_.double().numpy().T / np.linalg.norm(xs * scale, axis=1, keepdims=True)
    np.testing.assert_allclose(basis.cosine(x).numpy(), cos, atol=1e-5)
    back = basis.pca.inverse_transform(basis.project(x).double())
    np.testing.assert_allclose(back.numpy(), reference.inverse_transform(projected * signs) / scale, atol=1e-6 * 60)


def test_steering_vectors_are_in_activation_units():
    """A step of alpha along a scaled basis's direction moves the scaled feature by alpha along it: the vector is the
    direction divided by the scale, so its projection on direction i moves by exactly alpha, on the others by 0."""
    x, _ = planted(seed=2)
    basis = fitted(x, "coordinate")
    vector = SteeringVector.from_basis(basis, 1, alpha=2.5)
    shift = torch.cat([vector.chunks[3], vector.chunks[4]]).double()
    expected = 2.5 * basis.components_[1].double() / basis.pca.scale
    torch.testing.assert_close(shift, expected, rtol=1e-6, atol=0)
    moved = basis.project(x[:5] + shift) - basis.project(x[:5])
    torch.testing.assert_close(moved.double(), torch.tensor([0.0, 2.5, 0.0]).expand(5, 3).double(), rtol=0, atol=1e-4)
    std = SteeringVector.from_basis(basis, 1, alpha=1.0, unit="std")  # one standard deviation of direction 1's score
    moved = basis.project(x[:1] + torch.cat([std.chunks[3], std.chunks[4]]).double()) - basis.project(x[:1])
    assert float(moved[0, 1]) == pytest.approx(float(basis.eigenvalues_[1].sqrt()), rel=1e-4)


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.parametrize("scaling", ["layer", "coordinate"])
def test_refit_with_a_scaling_equals_a_fresh_profile_with_it(tmp_path, tiny_model, scaling):
    model = tiny_model("llama")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(30, seed=11)])
    common = ("--model", model, "--corpus", corpus, "-k", 4, "--quiet", "--save-features")
    code, out = invoke("profile", *common, "--out", tmp_path / "plain")
    assert code == 0, out
    code, out = invoke("fit", tmp_path / "plain", "-k", 4, "--scaling", scaling)
    assert code == 0 and f"scaling {scaling}" in out, out
    code, out = invoke("profile", *common, "--scaling", scaling, "--out", tmp_path / "fresh")
    assert code == 0, out
    refit, fresh = SkillBasis.load(tmp_path / "plain"), SkillBasis.load(tmp_path / "fresh")
    a, b = load_statistics(tmp_path / "plain" / "stats.safetensors"), load_statistics(tmp_path / "fresh" / "stats.safetensors")
    assert torch.equal(a.sumsq.data, b.sumsq.data) and torch.equal(a.sum, b.sum)  # one pass, whatever the scaling
    assert refit.scaling == fresh.scaling == scaling
    torch.testing.assert_close(refit.pca.scale, fresh.pca.scale, rtol=0, atol=0)
    torch.testing.assert_close(refit.eigenvalues_, fresh.eigenvalues_, rtol=1e-12, atol=0)
    assert torch.allclose((refit.components_ * fresh.components_).sum(1).abs(), torch.ones(4), atol=1e-6)
    # Against the saved features, scaled by hand: the same eigenvalues (fp64 numpy).
    feats = torch.cat([f for f, _, _ in iter_feature_shards(tmp_path / "plain" / "features")]).double().numpy()
    variances = feats.var(axis=0, ddof=1)
    if scaling == "coordinate":
        scale = np.where(variances > 0, 1 / np.sqrt(variances), 0.0)
    else:
        scale = np.concatenate([np.full(48, 1 / np.sqrt(variances[j * 48:(j + 1) * 48].sum())) for j in range(2)])
    evals = np.linalg.eigvalsh(np.cov(feats * scale, rowvar=False))[::-1][:4]
    np.testing.assert_allclose(refit.eigenvalues_.numpy(), evals, rtol=1e-5)
    record = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert record["config"]["scaling"] == scaling and record["basis"]["scaling"] == scaling
    code, out = invoke("fit", tmp_path / "plain", "-k", 4, "--scaling", "none")
    assert code == 0 and SkillBasis.load(tmp_path / "plain").pca.scale is None


def test_scaling_needs_exact_statistics(tmp_path, tiny_model):
    model = tiny_model("llama")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in make_texts(30, seed=12)])
    code, out = invoke("profile", "--model", model, "--corpus", corpus, "-k", 2, "--quiet", "--sketch-size", 8,
                       "--out", tmp_path / "sketch")
    assert code == 0, out
    code, out = invoke("fit", tmp_path / "sketch", "-k", 2, "--scaling", "coordinate")
    assert code == 2 and "needs each feature's variance" in out and "no --sketch-size" in out, out


@pytest.mark.parametrize("big,small", [(1e7, 1e-18), (1e-20, 1e-20), (1e30, 1e30)])
def test_coordinate_scaling_is_the_correlation_matrix_at_any_scale_of_the_features(big, small):
    """Half the features 1e25 times the other half's scale: the fp32 copy of the sums (scaled to the largest
    variance) rounded the small half to 0, which standardizing weighs like the rest (wrong pairs, reported
    converged); features all far from 1 left fp32's range."""
    g = torch.Generator().manual_seed(1)
    dim = 600  # the Krylov path
    x = torch.randn(400, 4, generator=g, dtype=torch.float64) @ torch.randn(4, dim, generator=g, dtype=torch.float64)
    x += 0.3 * torch.randn(400, dim, generator=g, dtype=torch.float64)
    x[:, :dim // 2] *= big
    x[:, dim // 2:] *= small
    stats = StreamingCovariance(dim)
    stats.update(x)
    pca = fit_components(stats, 4, scale=feature_scale(stats.variances(), "coordinate", FeatureLayout((0,), dim)))
    expected = np.linalg.eigvalsh(np.corrcoef(x.numpy().T))[::-1][:4]
    np.testing.assert_allclose(pca.explained_variance.numpy(), expected, rtol=1e-6)
