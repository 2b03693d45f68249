"""One model-compatibility rule: a model is its config and its weights, never the folder it was loaded from."""

from __future__ import annotations

import shutil

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from autoskill_fast.capture.fingerprint import describe_mismatch, fingerprint, fingerprint_folder, model_mismatch
from autoskill_fast.cli import cli
from autoskill_fast.errors import AutoskillError
from model_fixtures import write_jsonl


def fine_tune(source, folder, *, scale=1e-3, seed=0):
    """A copy of a model with every weight moved a little: the same config, other weights."""
    shutil.copytree(source, folder)
    weights = load_file(folder / "model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    tuned = {k: v + scale * torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in weights.items()}
    save_file(tuned, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_weights_hash_is_the_same_from_files_in_memory_and_in_any_dtype(tiny_model, arch):
    folder = tiny_model(arch)
    config = transformers.AutoConfig.from_pretrained(folder)
    from_files = fingerprint_folder(folder, config, "x")
    hashes = set()
    for cls in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        for dtype in (torch.float32, torch.bfloat16):
            model = cls.from_pretrained(folder, dtype=dtype)
            fp = fingerprint(model, "y")
            hashes.add(fp["weights"])
            assert model_mismatch(from_files, fp) is None
    assert hashes == {from_files["weights"]} and len(from_files["weights"]) == 16


def test_float16_of_a_float32_checkpoint_is_told_apart_as_rounded_twice(tiny_model):
    """fp16 rounds an fp32 checkpoint's weights before the hash's bf16 rounding: another hash, and the mismatch
    message names that case."""
    folder = tiny_model("llama")  # saved in float32
    from_files = fingerprint_folder(folder, transformers.AutoConfig.from_pretrained(folder), "x")
    half = fingerprint(transformers.AutoModel.from_pretrained(folder, dtype=torch.float16), "half")
    assert model_mismatch(from_files, half) == "weights"
    assert "the model loaded in float16, which rounds some weights twice" in describe_mismatch("weights", from_files,
                                                                                               half)


def test_a_fine_tune_differs_and_a_renamed_copy_does_not(tiny_model, tmp_path):
    folder = tiny_model("llama")
    config = transformers.AutoConfig.from_pretrained(folder)
    original = fingerprint_folder(folder, config, "original")
    renamed = fingerprint_folder(shutil.copytree(folder, tmp_path / "renamed-copy"), config, "renamed-copy")
    tuned = fingerprint_folder(fine_tune(folder, tmp_path / "tuned"), config, "tuned")
    assert model_mismatch(original, renamed) is None
    assert model_mismatch(original, tuned) == "weights"
    assert original["config_hash"] == tuned["config_hash"]  # the config alone cannot tell them apart


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_project_accepts_a_renamed_copy_and_refuses_a_fine_tune(tiny_model, tmp_path):
    model = tiny_model("llama")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": f"text number {i} " * (1 + i % 4)} for i in range(10)])
    code, out = invoke("profile", "--model", model, "--corpus", corpus, "--out", tmp_path / "run", "-k", 2, "--quiet")
    assert code == 0, out
    renamed = shutil.copytree(model, tmp_path / "somewhere-else")
    code, out = invoke("project", tmp_path / "run", "--model", renamed, "--corpus", corpus, "--out", tmp_path / "p1",
                       "--quiet")
    assert code == 0, out
    tuned = fine_tune(model, tmp_path / "tuned")
    code, out = invoke("project", tmp_path / "run", "--model", tuned, "--corpus", corpus, "--out", tmp_path / "p2",
                       "--quiet")
    assert code == 2 and "a fine-tune, or another checkpoint" in out and "Traceback" not in out, out


def test_steering_refuses_a_fine_tune_and_accepts_a_renamed_copy(tiny_model, tmp_path):
    from autoskill_fast.basis import SkillBasis
    from autoskill_fast.capture.layout import FeatureLayout
    from autoskill_fast.decomposition.components import PrincipalComponents
    from autoskill_fast.steering import SteeringVector, steer

    folder = tiny_model("llama")
    base = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    direction = torch.nn.functional.normalize(torch.randn(1, 96, generator=torch.Generator().manual_seed(1)), dim=1)
    basis = SkillBasis(PrincipalComponents(direction, torch.ones(1, dtype=torch.float64),
                                           torch.zeros(96, dtype=torch.float64), 10, 1.0),
                       FeatureLayout((1, 2), 48), model=fingerprint(base, "original"))
    vector = SteeringVector.from_basis(basis, 0)
    renamed = transformers.AutoModelForCausalLM.from_pretrained(shutil.copytree(folder, tmp_path / "copy"))
    with steer(renamed, vector):
        pass
    tuned = transformers.AutoModelForCausalLM.from_pretrained(fine_tune(folder, tmp_path / "tuned"))
    with pytest.raises(AutoskillError, match="a fine-tune, or another checkpoint"):
        with steer(tuned, vector):
            pass
    with pytest.raises(AutoskillError, match="basis was made from model 'original'"):
        basis.check_model(fingerprint(tuned, "tuned"))
