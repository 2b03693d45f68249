"""Steering vectors, hooks, baked checkpoints and llama.cpp export: tiny random-weight models and the default model."""

import json
import warnings

import numpy as np
import pytest
import torch
import transformers

from autoskill_fast.basis import SkillBasis
from autoskill_fast.decomposition.components import PrincipalComponents
from autoskill_fast.capture.layout import FeatureLayout
from autoskill_fast.errors import AutoskillError
from autoskill_fast.capture.fingerprint import fingerprint
from autoskill_fast.capture.models import decoder_blocks
from autoskill_fast.steering import SteeringVector, bake, export_llamacpp, read_llamacpp, steer, verify_bake
from autoskill_fast.run.folder import RunFolder
from autoskill_fast.run.record import RunRecord
from autoskill_fast.steering.hooks import _add_hook

ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
}
HIDDEN, LAYERS, VOCAB = 64, 3, 256
ATOL = 1e-4  # fp32, max abs difference of logits


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make_tiny(folder, arch="llama", seed=0, **overrides):
    """A tiny random model with every weight (biases and norms too) randomized, saved with save_pretrained."""
    config_cls, model_cls, extra = ARCHS[arch]
    config = getattr(transformers, config_cls)(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, **{**extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(folder)
    return folder


def load(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def random_basis(model_fp, layer_ids, hidden=HIDDEN, k=3, seed=0, layer_scale=None):
    d = len(layer_ids) * hidden
    comps = torch.nn.functional.normalize(torch.randn(k, d, generator=torch.Generator().manual_seed(seed)), dim=1)
    pca = PrincipalComponents(comps, torch.arange(k, 0, -1, dtype=torch.float64), torch.zeros(d, dtype=torch.float64),
                              100, float(k * (k + 1) / 2))
    return SkillBasis(pca, FeatureLayout(tuple(layer_ids), hidden), model=model_fp, layer_scale=layer_scale)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = make_tiny(tmp_path_factory.mktemp(arch), arch, seed=list(ARCHS).index(arch))
        return made[arch]

    return get


def logits(model, input_ids):
    with torch.inference_mode():
        return model(input_ids=input_ids).logits


def token_ids(batch=2, length=12, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- vectors ------------------------------------------------------------------------------------------------


def test_from_basis_splits_scales_and_signs():
    basis = random_basis({"name": "m", "hidden_size": HIDDEN}, (1, 2))
    v = SteeringVector.from_basis(basis, 1, alpha=0.5, sign=-1)
    assert v.layer_ids == [1, 2] and v.hidden_size == HIDDEN
    torch.testing.assert_close(torch.cat([v.chunks[1], v.chunks[2]]), -0.5 * basis.components_[1])
    assert v.norm() == pytest.approx(0.5, rel=1e-6)
    assert v.terms == [{"basis": None, "direction": 1, "label": None, "coefficient": -0.5, "alpha": -0.5, "unit": "norm"}]

    combo = SteeringVector.from_basis(basis, [0, 2], alpha=2.0, weights=[1.0, -0.5], layers=[2])
    assert combo.layer_ids == [2]
    torch.testing.assert_close(combo.chunks[2], 2.0 * (basis.components_[0] - 0.5 * basis.components_[2])[HIDDEN:])

    with pytest.raises(AutoskillError, match="out of range"):
        SteeringVector.from_basis(basis, 7)
    with pytest.raises(AutoskillError, match="no chunk for blocks"):
        SteeringVector.from_basis(basis, 0, layers=[0])


def test_from_basis_undoes_pilot_layer_scale():
    scale = torch.tensor([0.5, 4.0])
    basis = random_basis({"name": "m"}, (0, 1), layer_scale=scale)
    u = basis.components_[0]
    v = SteeringVector.from_basis(basis, 0, alpha=1.0)
    torch.testing.assert_close(v.chunks[0], u[:HIDDEN] / 0.5)
    torch.testing.assert_close(v.chunks[1], u[HIDDEN:] / 4.0)
    raw = SteeringVector.from_basis(basis, 0, alpha=1.0, unscale=False)
    torch.testing.assert_close(raw.chunks[1], u[HIDDEN:])


def test_vector_algebra():
    fp = {"name": "m", "config_hash": "abc", "hidden_size": 4}
    a = SteeringVector({1: torch.ones(4), 2: torch.full((4,), 2.0)}, fp, [{"direction": 0, "coefficient": 1.0}])
    b = SteeringVector({2: torch.ones(4), 3: torch.full((4,), 3.0)}, fp, [{"direction": 1, "coefficient": 0.5}])
    s = a + b
    assert s.layer_ids == [1, 2, 3]
    torch.testing.assert_close(s.chunks[2], torch.full((4,), 3.0))
    assert [t["coefficient"] for t in s.terms] == [1.0, 0.5]
    d = a - b
    torch.testing.assert_close(d.chunks[3], torch.full((4,), -3.0))
    assert [t["coefficient"] for t in d.terms] == [1.0, -0.5]
    torch.testing.assert_close((2 * a).chunks[2], torch.full((4,), 4.0))
    torch.testing.assert_close((a * 2).chunks[1], (a / 0.5).chunks[1])
    torch.testing.assert_close((-a).chunks[1], -torch.ones(4))
    assert (-a).terms[0]["coefficient"] == -1.0
    torch.testing.assert_close((a - a).chunks[2], torch.zeros(4))
    assert a.chunks[1].eq(1).all(), "algebra must not modify its operands"

    other = SteeringVector({1: torch.ones(4)}, {**fp, "config_hash": "xyz"})
    with pytest.raises(AutoskillError, match="different models"):
        a + other
    with pytest.raises(AutoskillError, match="hidden sizes"):
        a + SteeringVector({1: torch.ones(5)})


def test_save_load_round_trip(tmp_path):
    basis = random_basis({"name": "m", "model_type": "llama", "config_hash": "h", "num_layers": 3,
                          "hidden_size": HIDDEN}, (0, 2))
    v = SteeringVector.from_basis(basis, [0, 1], alpha=0.7, weights=[1, -1], source="runs/x")
    v.save(tmp_path / "vec")
    w = SteeringVector.load(tmp_path / "vec")
    assert w.layer_ids == v.layer_ids and w.model == v.model and w.terms == v.terms
    for layer in v.layer_ids:
        assert torch.equal(w.chunks[layer], v.chunks[layer])
    (tmp_path / "vec" / "steering_vector.safetensors").write_bytes(b"garbage")
    with pytest.raises(AutoskillError, match="corrupted"):
        SteeringVector.load(tmp_path / "vec")


# ---- hooks --------------------------------------------------------------------------------------------------


def test_hooks_are_removed_and_model_unchanged(tiny):
    model = load(tiny("llama"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = token_ids()
    reference = logits(model, ids)
    vector = SteeringVector.from_basis(random_basis(fingerprint(model, "tiny"), (0, 1, 2)), 0, alpha=4.0)
    with steer(model, vector):
        steered = logits(model, ids)
    assert (steered - reference).abs().max() > 1e-2
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, vector):
            logits(model, ids)
            raise RuntimeError("boom")
    assert all(not block._forward_hooks for block in decoder_blocks(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits(model, ids), reference)


def test_hook_keeps_tuple_outputs():
    hook = _add_hook(torch.ones(3))
    hidden, extra = torch.zeros(1, 2, 3), object()
    out = hook(None, (), (hidden, extra))
    assert isinstance(out, tuple) and out[1] is extra and torch.equal(out[0], torch.ones(1, 2, 3))
    assert torch.equal(hook(None, (), hidden), torch.ones(1, 2, 3))
    assert torch.equal(hidden, torch.zeros(1, 2, 3)), "the block's own output must not be modified in place"


def test_fingerprint_refusal(tiny, tmp_path):
    llama, qwen = load(tiny("llama")), load(tiny("qwen2"))
    vector = SteeringVector.from_basis(random_basis(fingerprint(llama, "tiny"), (0, 1)), 0)
    with pytest.raises(AutoskillError, match="made for model"):
        with steer(qwen, vector):
            pass
    with pytest.raises(AutoskillError, match="made for model"):
        bake(vector, tiny("qwen2"), tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists()
    with steer(qwen, vector, check_model=False):  # an explicit override still works (same hidden size)
        pass


# ---- baking -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_baked_checkpoint_equals_hook_steering(arch, tiny, tmp_path):
    src = tiny(arch)
    model = load(src)
    vector = SteeringVector.from_basis(random_basis(fingerprint(model, arch), (0, 2)), [0, 1], alpha=4.0,
                                       weights=[1.0, -0.5])
    out = bake(vector, src, tmp_path / "baked", verify=False)
    baked, info = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(baked).__name__ == "LlamaForCausalLM" and baked.config.mlp_bias
    assert baked.config.attention_bias == (arch == "qwen2")
    assert baked.config.tie_word_embeddings == model.config.tie_word_embeddings

    ids = token_ids()
    with steer(model, vector):
        expected = logits(model, ids)
    diff = (logits(baked.eval(), ids) - expected).abs().max().item()
    assert diff <= ATOL, f"{arch}: baked vs hook steering max abs diff {diff:.3g}"
    assert (expected - logits(model, ids)).abs().max() > 1e-2, "the vector should change the logits"

    layers = decoder_blocks(baked)
    torch.testing.assert_close(layers[1].mlp.down_proj.bias, torch.zeros(HIDDEN))
    torch.testing.assert_close(layers[2].mlp.down_proj.bias, vector.chunks[2])
    assert layers[0].mlp.gate_proj.bias.abs().max() == 0
    if arch == "qwen2":
        assert layers[0].self_attn.o_proj.bias.abs().max() == 0
        torch.testing.assert_close(layers[0].self_attn.q_proj.bias, decoder_blocks(model)[0].self_attn.q_proj.bias)
    assert SteeringVector.load(out).layer_ids == vector.layer_ids
    generation = [json.loads((folder / "generation_config.json").read_text()) for folder in (out, src)]
    assert generation[0] == generation[1]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_alpha_zero_gives_the_original_model(arch, tiny, tmp_path):
    src = tiny(arch)
    model = load(src)
    vector = SteeringVector.from_basis(random_basis(fingerprint(model, arch), (0, 1, 2)), 0, alpha=0.0)
    baked = load(bake(vector, src, tmp_path / "baked", verify=False))
    ids = token_ids(length=20)
    diff = (logits(baked, ids) - logits(model, ids)).abs().max().item()
    assert diff <= 1e-5, f"{arch}: the re-expressed unsteered model differs from the original by {diff:.3g}"


def test_sliding_window_caps_the_context(tmp_path):
    src = make_tiny(tmp_path / "src", "mistral", sliding_window=8)
    model = load(src)
    vector = SteeringVector.from_basis(random_basis(fingerprint(model, "m"), (1,)), 0, alpha=4.0)
    with pytest.warns(UserWarning, match="sliding window of 8"):
        out = bake(vector, src, tmp_path / "baked", verify=False)
    baked = load(out)
    assert baked.config.max_position_embeddings == 8
    ids = token_ids(length=8)
    with steer(model, vector):
        expected = logits(model, ids)
    assert (logits(baked, ids) - expected).abs().max() <= ATOL

    scaled = make_tiny(tmp_path / "scaled", "mistral", sliding_window=8,
                       rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(AutoskillError, match="'linear' RoPE"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bake(SteeringVector(vector.chunks), scaled, tmp_path / "scaled-baked", verify=False)


def test_bake_refuses_unsupported_and_existing(tmp_path, tiny):
    gpt2 = tmp_path / "gpt2"
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(gpt2)
    vector = SteeringVector({1: torch.zeros(32)})
    with pytest.raises(AutoskillError, match="supported: Llama"):
        bake(vector, gpt2, tmp_path / "out", verify=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(AutoskillError, match="not empty"):
        bake(SteeringVector({1: torch.zeros(HIDDEN)}), tiny("llama"), tmp_path / "busy", verify=False)


def test_verify_bake_accepts_good_and_catches_wrong(tiny, tmp_path):
    src = tiny("llama")
    vector = SteeringVector.from_basis(random_basis(fingerprint(load(src), "t"), (1, 2)), 0, alpha=4.0)
    out = bake(vector, src, tmp_path / "baked", verify=True)
    assert json.loads((out / "steering" / "bake.json").read_text())["verified_max_abs_diff"] <= ATOL
    with pytest.raises(AutoskillError, match="differ from hook steering"):
        verify_bake(src, out, 2 * vector)


@pytest.mark.parametrize("sharded", [False, True])
def test_safetensors_beside_the_weights_are_not_the_model(tmp_path, sharded):
    """Mistral's repos ship consolidated.safetensors (the original format) beside the weights transformers loads: the
    folder's fingerprint is the loaded model's, and the bake copies only the weights."""
    from safetensors.torch import save_file

    from autoskill_fast.capture.fingerprint import fingerprint_folder

    model = load(make_tiny(tmp_path / "made", "mistral"))
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="100KB" if sharded else "10GB")
    assert (src / "model.safetensors.index.json").is_file() == sharded
    save_file({"layers.0.attention.wq.weight": torch.randn(HIDDEN, HIDDEN)}, str(src / "consolidated.safetensors"))
    assert fingerprint_folder(src, model.config, "m")["weights"] == fingerprint(model, "m")["weights"]
    vector = SteeringVector.from_basis(random_basis(fingerprint(model, "m"), (1,)), 0, alpha=4.0)
    out = bake(vector, src, tmp_path / "baked", verify=True)
    assert not (out / "consolidated.safetensors").exists()


def test_a_bias_in_another_shard_than_its_weight_is_steered_where_it_is(tmp_path):
    """save_pretrained with small shards puts some MLP biases of a Llama with mlp_bias in another shard than their
    weights. The bake wrote a second, new bias beside the weight, and the index kept one of the two: the source's bias
    or the chunk was lost (0.78 off hook steering). Each bias is now steered in its own shard, once."""
    from safetensors import safe_open

    model = load(make_tiny(tmp_path / "made", "llama", mlp_bias=True))
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="40KB")
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    apart = [layer for layer in range(LAYERS) if index[f"model.layers.{layer}.mlp.down_proj.bias"]
             != index[f"model.layers.{layer}.mlp.down_proj.weight"]]
    assert apart, "the test needs a bias stored apart from its weight"
    vector = SteeringVector.from_basis(random_basis(fingerprint(model, "m"), tuple(range(LAYERS))), 0, alpha=4.0)
    out = bake(vector, src, tmp_path / "baked", verify=False)
    keys = []
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            keys.extend(f.keys())
    assert len(keys) == len(set(keys))  # every tensor once
    baked = load(out)
    for layer in range(LAYERS):
        torch.testing.assert_close(decoder_blocks(baked)[layer].mlp.down_proj.bias,
                                   decoder_blocks(model)[layer].mlp.down_proj.bias + vector.chunks[layer])
    ids = token_ids()
    with steer(model, vector):
        expected = logits(model, ids)
    assert (logits(baked, ids) - expected).abs().max().item() <= ATOL


def test_a_bf16_checkpoint_is_verified_against_the_vector_it_holds(tmp_path):
    """A bf16 checkpoint's bias holds the vector rounded to bf16 (what any engine adds): the check compares with hooks
    adding that rounded vector, and the record says how far the rounding moved it."""
    src = make_tiny(tmp_path / "src", "llama")
    model = load(src)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    vector = SteeringVector.from_basis(random_basis(fingerprint(model, "t"), (1, 2)), 0, alpha=4.0)
    vector = vector * 1.37  # entries far from bf16's grid
    out = bake(vector, tmp_path / "bf16", tmp_path / "baked", verify=True)
    record = json.loads((out / "steering" / "bake.json").read_text())
    rounded = {layer: chunk.to(torch.bfloat16).float() for layer, chunk in vector.chunks.items()}
    expected = max(float((rounded[layer] - chunk).abs().max()) for layer, chunk in vector.chunks.items())
    assert record["rounding_max_abs_diff"] == pytest.approx(expected) and expected > 0
    assert record["verified_max_abs_diff"] <= ATOL
    with pytest.raises(AutoskillError, match="differ from hook steering"):  # the unrounded vector is not what it holds
        verify_bake(tmp_path / "bf16", out, vector)


# ---- llama.cpp ----------------------------------------------------------------------------------------------


def test_llamacpp_export_reads_back(tmp_path):
    fp = {"name": "m", "model_type": "mistral", "num_layers": 6, "hidden_size": 8}
    vector = SteeringVector({2: torch.arange(8.0), 4: -torch.ones(8)}, fp, [{"direction": 0, "coefficient": 0.5}])
    path = export_llamacpp(vector, tmp_path / "cv.gguf")
    meta, directions = read_llamacpp(path)
    assert meta["general.architecture"] == "controlvector"
    assert meta["controlvector.model_hint"] == "llama"
    assert meta["controlvector.layer_count"] == 4
    assert sorted(directions) == [1, 2, 3, 4]  # direction.N is added to the output of block N
    np.testing.assert_array_equal(directions[2], np.arange(8.0, dtype=np.float32))
    np.testing.assert_array_equal(directions[4], -np.ones(8, dtype=np.float32))
    assert not directions[1].any() and not directions[3].any()
    assert json.loads(meta["autoskill.steering"])["terms"] == vector.terms

    with pytest.raises(AutoskillError, match="block 0"):
        export_llamacpp(SteeringVector({0: torch.ones(8), 1: torch.ones(8)}, fp), tmp_path / "bad.gguf")


# ---- the default model --------------------------------------------------------------------------------------


def test_default_model_baked_equals_hooks(default_model_dir, tmp_path):
    model = load(default_model_dir)
    fp = fingerprint(model, "default")
    vector = SteeringVector.from_basis(random_basis(fp, tuple(range(1, 29)), hidden=576, k=1), 0, alpha=0.5)
    baked = load(bake(vector, default_model_dir, tmp_path / "baked", verify=False))
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with steer(model, vector):
        expected = logits(model, ids)
    diff = (logits(baked, ids) - expected).abs().max().item()
    assert diff <= ATOL, f"default model: baked vs hook steering max abs diff {diff:.3g}"
    assert (expected - logits(model, ids)).abs().max() > 1e-3
    zero = load(bake(0 * vector, default_model_dir, tmp_path / "zero", verify=False))
    assert (logits(zero, ids) - logits(model, ids)).abs().max() <= 1e-5


# ---- the CLI ------------------------------------------------------------------------------------------------


def test_steer_cli_writes_every_format(tiny, tmp_path):
    from click.testing import CliRunner

    from autoskill_fast.cli import cli

    src = tiny("llama")
    run = tmp_path / "run"
    basis = random_basis(fingerprint(load(src), src.name), (0, 1, 2))
    basis.run_key = "steer-test"
    basis.save(run)
    RunFolder(run).write_record(RunRecord(status="complete", key="steer-test", config={"model": {"model": str(src)}},
                                          model=basis.model, corpus={}, pooling={}, layout=basis.layout.to_json()))
    runner = CliRunner()

    result = runner.invoke(cli, ["steer", str(run), "-d", "0", "-d", "2:-0.5", "--alpha", "3", "--sign", "-",
                                 "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    expected = SteeringVector.from_basis(basis, [0, 2], alpha=3.0, sign=-1, weights=[1.0, -0.5])
    baked = SteeringVector.load(tmp_path / "hf")
    assert all(torch.equal(baked.chunks[i], expected.chunks[i]) for i in expected.layer_ids)
    assert json.loads((tmp_path / "hf" / "steering" / "bake.json").read_text())["verified_max_abs_diff"] <= ATOL
    assert json.loads((tmp_path / "hf" / "steering" / "steer.json").read_text())["weights"] == [1.0, -0.5]

    result = runner.invoke(cli, ["steer", str(run), "--layers", "1-2", "--format", "llamacpp",
                                 "--out", str(tmp_path / "cpp")])
    assert result.exit_code == 0, result.output
    _, directions = read_llamacpp(tmp_path / "cpp" / "control_vector.gguf")
    np.testing.assert_array_equal(directions[2], (0.5 * basis.components_[0][2 * HIDDEN:]).numpy())

    result = runner.invoke(cli, ["steer", str(run), "--format", "llamacpp", "--out", str(tmp_path / "cpp0")])
    assert result.exit_code == 2 and "block 0" in result.output and "--layers 1,2" in result.output
    assert not (tmp_path / "cpp0").exists() and not list(tmp_path.glob(".cpp0*"))  # a failed export leaves nothing

    # --out NAME.gguf (the README's own example) writes that file, which is what llama.cpp's --control-vector takes.
    result = runner.invoke(cli, ["steer", str(run), "--layers", "1-2", "--format", "llamacpp",
                                 "--out", str(tmp_path / "cvec.gguf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cvec.gguf").is_file()
    meta, directions = read_llamacpp(tmp_path / "cvec.gguf")
    np.testing.assert_array_equal(directions[2], (0.5 * basis.components_[0][2 * HIDDEN:]).numpy())
    assert "autoskill.steering" in meta

    result = runner.invoke(cli, ["steer", str(run), "-d", "1", "--format", "vector", "--out", str(tmp_path / "vec")])
    assert result.exit_code == 0, result.output
    assert SteeringVector.load(tmp_path / "vec").terms[0]["direction"] == 1

    result = runner.invoke(cli, ["steer", str(run), "-d", "x", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "--direction" in result.output
