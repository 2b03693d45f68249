"""The run folder has one owner: bad input around it gives one-line errors, and no file of one run is read as part of
another. Each test here failed on the code before the redesign (issue 10's list of cases tried as a new user)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings

import pytest
import torch
from click.testing import CliRunner

from autoskill_fast.basis import SkillBasis
from autoskill_fast.cli import cli
from model_fixtures import write_jsonl

FIXTURE_V1 = __import__("pathlib").Path(__file__).parent / "fixtures" / "run_v1"


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    crashed = "" if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
    return result.exit_code, result.output + crashed


def one_line_error(code, out, *fragments):
    assert code == 2, out
    assert "Traceback" not in out and out.startswith("error: ") and out.count("\n") == 1, out
    for fragment in fragments:
        assert fragment in out, out


def corpus(tmp_path, name="c.jsonl", n=12, word="example"):
    return write_jsonl(tmp_path / name, [{"text": f"{word} number {i} " * (1 + i % 5)} for i in range(n)])


def run_json(folder):
    return json.loads((folder / "run.json").read_text())


def test_out_holding_another_run_is_refused_and_overwrite_replaces_it_wholly(tmp_path, tiny_model):
    out = tmp_path / "r"
    code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", out, "-k", 2,
                       "--quiet", "--save-features")
    assert code == 0, log
    before = (out / "stats.safetensors").stat().st_mtime_ns
    code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", out, "-k", 2,
                       "--quiet", "--save-features", "--overwrite")  # the same run: started over, not kept
    assert code == 0 and "already complete" not in log, log
    assert (out / "stats.safetensors").stat().st_mtime_ns != before
    before = (out / "stats.safetensors").stat().st_mtime_ns
    code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", out, "-k", 1,
                       "--scaling", "coordinate", "--quiet", "--save-features")  # the same run with another fit
    assert code == 0, log
    basis = SkillBasis.load(out)
    assert (basis.k, basis.scaling) == (1, "coordinate") and run_json(out)["basis"]["k"] == 1
    assert (out / "stats.safetensors").stat().st_mtime_ns == before  # refitted from them, no second forward pass
    bare = tmp_path / "bare"  # kept no features: a refit here would drop its scores
    code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", bare, "-k", 2,
                       "--quiet")
    assert code == 0, log
    one_line_error(*invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", bare, "-k",
                           1, "--quiet"), "kept no features, so refitting it to -k 1 --scaling none here would drop its "
                   "scores", "autoskill-fast project")
    assert SkillBasis.load(bare).k == 2 and (bare / "scores.safetensors").exists()
    other = corpus(tmp_path, "other.jsonl", n=9, word="different")
    args = ("profile", "--model", tiny_model("qwen2"), "--corpus", other, "--out", out, "-k", 2, "--quiet")
    one_line_error(*invoke(*args), f"{out}: holds a run of model", "--overwrite")
    assert run_json(out)["model"]["model_type"] == "llama"  # nothing of the old run was touched
    code, log = invoke(*args, "--overwrite")
    assert code == 0, log
    record = run_json(out)
    assert record["model"]["model_type"] == "qwen2" and record["counts"]["profiled"] == 9
    assert not (out / "features").exists()  # the old run's features went with it
    code, log = invoke("fit", out, "-k", 1)
    assert code == 0 and f"rescore with `autoskill-fast project {out} --out {out}`" in log, log
    assert not (out / "scores.safetensors").exists()  # never rescored from another run's features


def test_the_option_that_makes_another_run_is_named_and_prefetch_is_not_one(tmp_path, tiny_model):
    out = tmp_path / "r"
    base = ("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", out, "-k", 2, "--quiet")
    code, log = invoke(*base)
    assert code == 0, log
    code, log = invoke(*base, "--prefetch", 2)  # how far ahead batches are prepared: the same run, complete
    assert code == 0, log
    one_line_error(*invoke(*base, "--max-batch-size", 3), f"{out}: holds a run of model",
                   "with another batching.max_batch_size: 64 vs 3", "--overwrite")
    (out / "stats.safetensors").write_bytes(b"not safetensors")
    one_line_error(*invoke("fit", out, "-k", 1), "stats.safetensors: not a readable safetensors file", "damaged")


def test_a_file_left_over_from_another_run_is_never_read(tmp_path, tiny_model):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, n in ((a, 12), (b, 10)):
        code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path, f"{folder.name}.jsonl", n),
                           "--out", folder, "-k", 2, "--quiet", "--save-features")
        assert code == 0, log
    shutil.copy(a / "features" / "shard-00000.safetensors", b / "features" / "shard-00001.safetensors")
    one_line_error(*invoke("fit", b, "-k", 1), "shard-00001.safetensors: has the run key", "left over from another run")
    (b / "features" / "shard-00001.safetensors").unlink()
    for name in ("basis.json", "basis.safetensors"):
        shutil.copy(a / name, b / name)
    one_line_error(*invoke("select", b, "--out", tmp_path / "s.jsonl", "-n", 2), "basis.json: has the run key")
    one_line_error(*invoke("steer", b, "--format", "vector", "--out", tmp_path / "v"), "basis.json: has the run key")


def test_k_too_large_is_caught_before_the_forward_pass(tmp_path, tiny_model):
    out = tmp_path / "r"
    one_line_error(*invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", out,
                           "-k", 12, "--quiet"), "-k 12 is more directions than the data has: 12 examples")
    assert not (out / "stats.safetensors").exists()


def test_a_failed_fit_leaves_a_run_that_fit_completes(tmp_path, tiny_model):
    """Skipped examples leave fewer rows than the count before the forward pass promised: the fit fails after it."""
    records = [{"text": "a b c d"}, {"text": ""}, {"text": "e f g"}, {"text": ""}, {"text": "h i j"}, {"text": ""}]
    data = write_jsonl(tmp_path / "sparse.jsonl", records)
    out = tmp_path / "r"
    old = invoke("profile", "--model", tiny_model("qwen2"), "--corpus", corpus(tmp_path), "--out", out, "-k", 2, "--quiet")
    assert old[0] == 0, old[1]
    code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", data, "--out", out, "-k", 4, "--quiet",
                       "--on-bad-example", "skip", "--overwrite")
    one_line_error(code, log, "k=4 is more directions than the data has: 3 examples", f"autoskill-fast fit {out} -k N")
    record = run_json(out)
    assert record["status"] == "statistics" and record["model"]["model_type"] == "llama"
    assert not (out / "basis.json").exists()  # the old run's basis went with --overwrite
    code, log = invoke("fit", out, "-k", 2)
    assert code == 0, log
    record = run_json(out)
    assert record["status"] == "complete" and record["basis"]["k"] == 2 and record["error"] is None
    basis = json.loads((out / "basis.json").read_text())
    assert basis["model"]["model_type"] == "llama" and basis["run_key"] == record["key"]
    assert [s["id"] for s in record["skipped"]] == ["1", "3", "5"]


def test_out_naming_a_file_and_a_run_json_of_the_wrong_shape(tmp_path, tiny_model):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a folder")
    one_line_error(*invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", a_file,
                           "-k", 2, "--quiet"), "taken.txt: is a file, not a folder")
    out = tmp_path / "r"
    code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", out, "-k", 2,
                       "--quiet")
    assert code == 0, log
    good = run_json(out)
    for broken, fragment in (([1, 2], "expected a JSON object, got list"),
                             ({**good, "status": 3}, "field 'status' is int"),
                             ({k: v for k, v in good.items() if k != "key"}, "missing field 'key'"),
                             ({**good, "schema": 99}, "run.json schema 99"),
                             ({**good, "config": {**good["config"], "corpus": "x"}}, "field 'config.corpus'")):
        (out / "run.json").write_text(json.dumps(broken))
        one_line_error(*invoke("fit", out, "-k", 1), f"{out / 'run.json'}: ", fragment)


def test_an_encoder_only_model_is_refused_up_front(tmp_path, default_model_dir):
    import transformers

    bert = tmp_path / "bert"
    config = transformers.BertConfig(vocab_size=49152, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64)
    transformers.BertModel(config).save_pretrained(bert)
    shutil.copy(default_model_dir / "tokenizer.json", bert / "tokenizer.json")
    shutil.copy(default_model_dir / "tokenizer_config.json", bert / "tokenizer_config.json")
    one_line_error(*invoke("profile", "--model", bert, "--corpus", corpus(tmp_path), "--out", tmp_path / "r", "-k", 2,
                           "--quiet"), "not a decoder-only (causal) language model")
    # Without its architecture name, the causality probe refuses it after loading.
    raw = json.loads((bert / "config.json").read_text())
    raw.pop("architectures", None)
    raw["model_type"] = "bert-like"
    (bert / "config.json").write_text(json.dumps(raw))
    from autoskill_fast.capture.models import check_causal

    model = transformers.BertModel(config).eval()
    with pytest.raises(Exception, match="is not causal"):
        check_causal(model, bert)


def test_a_huge_text_is_cut_to_the_context_length_and_said_once(tmp_path, tiny_model):
    long_text = "seven ducks counted eggs " * 8000  # 200k characters, far past the tiny model's 512 positions
    data = write_jsonl(tmp_path / "c.jsonl", [{"text": long_text}, {"text": "short one"}, {"text": long_text + "x"},
                                             {"text": "another short text"}])
    code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", data, "--out", tmp_path / "r", "-k", 2)
    assert code == 0, log
    assert log.count("warning:") == 1 and "truncated (set --max-length" in log, log
    assert "truncated 2 example(s) to 512 tokens" in log, log
    record = run_json(tmp_path / "r")
    assert record["counts"]["truncated"] == 2 and record["pooling"]["max_length"] == 512


def test_errors_name_the_flag_on_the_cli_and_the_field_in_python(tmp_path, tiny_model):
    from autoskill_fast import PoolingConfig, ProfileConfig
    from autoskill_fast.errors import AutoskillError

    one_line_error(*invoke("profile", "--out", tmp_path / "r", "--max-length", 1), "error: --max-length: must be at least 2")
    one_line_error(*invoke("profile", "--out", tmp_path / "r", "-k", 0), "error: -k: must be positive")
    one_line_error(*invoke("select", tmp_path, "--out", tmp_path / "s.jsonl", "-n", 0), "error: --budget: must be positive")
    with pytest.raises(AutoskillError, match=r"^PoolingConfig\.max_length: must be at least 2"):
        PoolingConfig(max_length=1)
    with pytest.raises(AutoskillError, match=r"^ProfileConfig\.shard: must be i/n"):
        ProfileConfig(out="x", shard=(3, 2))


def test_every_artifact_gets_the_usual_permissions(tmp_path, tiny_model):
    previous = os.umask(0o022)
    try:
        out = tmp_path / "r"
        code, log = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus(tmp_path), "--out", out,
                           "-k", 2, "--quiet", "--save-features")
        assert code == 0, log
        code, log = invoke("select", out, "--out", tmp_path / "sel.jsonl", "-n", 3)
        assert code == 0, log
        code, log = invoke("inspect", out, "--labeling-prompts", tmp_path / "prompts.jsonl", "--no-html")
        assert code == 0, log
    finally:
        os.umask(previous)
    files = [p for p in [*out.rglob("*"), *tmp_path.glob("*.jsonl"), *tmp_path.glob("*.json")] if p.is_file()]
    assert {p.suffix for p in files} >= {".safetensors", ".json", ".jsonl"}
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes


def test_a_run_folder_from_before_the_redesign_still_works(tmp_path):
    """tests/fixtures/run_v1 was written by the code before run.json had a schema (profile --save-features of a tiny
    model on 12 texts): its record, basis, statistics, scores and features still load, refit and select."""
    from autoskill_fast import SkillBasis, load_run

    folder = tmp_path / "old"
    shutil.copytree(FIXTURE_V1, folder)
    run = load_run(folder)
    assert run.record.created_schema == 1 and run.record.status == "complete" and run.basis.k == 3
    assert run.record.config["batching"]["token_budget"] == 512  # the flat batching options, read into their place
    code, log = invoke("fit", folder, "-k", 2)
    assert code == 0, log
    refit = SkillBasis.load(folder)
    assert refit.k == 2 and torch.allclose(refit.components_, run.basis.components_[:2], atol=1e-4)
    code, log = invoke("select", folder, "--out", tmp_path / "s.jsonl", "-n", 4, "--corpus", folder / "corpus.jsonl")
    assert code == 0, log
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 4
    assert json.loads((folder / "run.json").read_text())["schema"] == 2  # rewritten in the current schema


def test_a_short_sliding_window_bake_says_plainly_what_it_cannot_represent(tmp_path, tiny_model):
    """A Mistral whose sliding window is shorter than the bake's check used to end in 'please report this'."""
    import transformers

    from autoskill_fast.basis import SkillBasis
    from autoskill_fast.capture.fingerprint import fingerprint
    from autoskill_fast.capture.layout import FeatureLayout
    from autoskill_fast.decomposition.components import PrincipalComponents
    from autoskill_fast.steering import SteeringVector, bake

    source = tmp_path / "mistral"
    shutil.copytree(tiny_model("mistral"), source)
    raw = json.loads((source / "config.json").read_text())
    raw["sliding_window"] = 8
    (source / "config.json").write_text(json.dumps(raw))
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    direction = torch.nn.functional.normalize(torch.randn(1, 2 * 48, generator=torch.Generator().manual_seed(0)), dim=1)
    basis = SkillBasis(PrincipalComponents(direction, torch.ones(1, dtype=torch.float64), torch.zeros(96, dtype=torch.float64),
                                           10, 1.0), FeatureLayout((1, 2), 48), model=fingerprint(model, "mistral"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = bake(SteeringVector.from_basis(basis, 0, alpha=2.0), source, tmp_path / "baked")
    said = [str(w.message) for w in caught]
    assert any("sliding window of 8 tokens, which the baked Llama checkpoint cannot represent" in m
               and "exact for inputs of up to 8 tokens only" in m and "--format llamacpp" in m for m in said), said
    record = json.loads((out / "steering" / "bake.json").read_text())
    assert record["verified_tokens"] == 8 and record["verified_max_abs_diff"] < 1e-3
