"""The CLI end to end on a tiny model: outputs, and one-line errors (never a traceback) for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from autoskill_fast.cli import cli
from helpers import invoke
from model_fixtures import write_jsonl


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "c.jsonl", [{"text": f"example number {i} " * (1 + i % 5)} for i in range(12)])


def test_project_checks_only_the_pooling_options_typed(tmp_path, tiny_model, corpus):
    """A basis pooled otherwise than the defaults (last token, l2 scaling, blocks 1-3): `project --max-length` alone
    applies the cut and keeps the basis's pooling; an option typed is checked against the basis, the others are the
    basis's own, not the profile defaults."""
    model = tiny_model("llama")
    code, out = invoke("profile", "--model", model, "--corpus", corpus, "--out", tmp_path / "run", "-k", 3, "--quiet",
                       "--pooling", "last", "--layer-scaling", "l2", "--layers", "1-3")
    assert code == 0, out
    for name, options in (("cut", ("--max-length", 4)), ("same-layers", ("--layers", "1-3")),
                          ("same-pooling", ("--pooling", "last", "--layer-scaling", "l2"))):
        code, out = invoke("project", tmp_path / "run", "--model", model, "--corpus", corpus, "--out", tmp_path / name,
                           "--quiet", *options)
        assert code == 0, (name, out)
    assert json.loads((tmp_path / "cut" / "project.json").read_text())["truncated"] > 0
    code, out = invoke("project", tmp_path / "run", "--model", model, "--corpus", corpus, "--out", tmp_path / "other",
                       "--pooling", "mean", "--quiet")
    assert code == 2 and "pooling options given (mode: 'last' vs 'mean')" in out, out
    shown = " ".join(invoke("project", "--help")[1].split())  # as one line: click wraps the help
    assert "Default: the basis's own; a value given must be the basis's, except for --max-length" in shown
    assert "[default: mean]" not in shown, shown
    assert "1 .. L-2" not in shown and "[default: mean]" in " ".join(invoke("profile", "--help")[1].split())


def test_profile_fit_project_round_trip(tmp_path, tiny_model, corpus):
    model = tiny_model("llama")
    code, out = invoke("profile", "--model", model, "--corpus", corpus, "--out", tmp_path / "run", "-k", 4, "--quiet",
                       "--save-features")
    assert code == 0, out
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["counts"]["profiled"] == 12 and run["status"] == "complete"
    assert run["model"]["num_layers"] == 4 and run["layout"]["layer_ids"] == [1, 2]
    assert not (tmp_path / "run" / ".features-tmp").exists()
    assert len(list((tmp_path / "run" / "features").glob("shard-*.safetensors"))) >= 1
    code, out = invoke("fit", tmp_path / "run", "-k", 2)
    assert code == 0 and "k=2" in out, out
    code, out = invoke("project", tmp_path / "run", "--model", model, "--corpus", corpus, "--out", tmp_path / "proj", "--quiet")
    assert code == 0, out
    from autoskill_fast.run.scores import Scores

    projected, profiled = Scores.load(tmp_path / "proj"), Scores.load(tmp_path / "run")
    assert projected.ids == profiled.ids
    torch.testing.assert_close(projected.projection, profiled.projection, rtol=1e-4, atol=1e-4)
    code, out = invoke("project", tmp_path / "run", "--model", model, "--corpus", corpus, "--out", tmp_path / "run")
    assert code == 2 and "already has scores" in out, out  # a run without them is scored in place
    # Pooling options of project describe the basis's: --keep-first-token (an alias) is checked like --first-token;
    # --max-length applies.
    code, out = invoke("project", tmp_path / "run", "--model", model, "--corpus", corpus, "--out", tmp_path / "p2",
                       "--keep-first-token", "--quiet")
    assert code == 2 and "pooling options given" in out, out
    code, out = invoke("project", tmp_path / "run", "--model", model, "--corpus", corpus, "--out", tmp_path / "cut",
                       "--max-length", 3, "--quiet")
    assert code == 0, out
    cut = json.loads((tmp_path / "cut" / "project.json").read_text())
    assert cut["truncated"] > 0, cut

    # Scores left by an earlier basis of the run (a refit killed before rescoring) are refused, not used.
    from autoskill_fast.run.reading import load_run

    stale = Scores.load(tmp_path / "run")
    code, out = invoke("fit", tmp_path / "run", "-k", 2, "--scaling", "coordinate")
    assert code == 0, out
    load_run(tmp_path / "run")
    stale.save(tmp_path / "run")
    code, out = invoke("select", tmp_path / "run", "-n", 3, "--method", "pole", "--direction", "+0",
                       "--out", tmp_path / "s.jsonl")
    assert code == 2 and "made by an earlier basis" in out, out


def test_fit_without_features_drops_stale_scores(tmp_path, tiny_model, corpus):
    code, out = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus, "--out", tmp_path / "r", "-k", 3, "--quiet")
    assert code == 0 and (tmp_path / "r" / "scores.safetensors").exists(), out
    before = json.loads((tmp_path / "r" / "scores.json").read_text())
    code, out = invoke("fit", tmp_path / "r", "-k", 2)
    assert code == 0 and f"autoskill-fast project {tmp_path / 'r'} --out {tmp_path / 'r'}" in out, out
    assert not (tmp_path / "r" / "scores.safetensors").exists()
    one_line_error(*invoke("select", tmp_path / "r", "--out", tmp_path / "s.jsonl", "-n", 2), "no scores.safetensors",
                   f"autoskill-fast project {tmp_path / 'r'} --out")
    # the hint works: `project RUN --out RUN` scores the run in place, from its own corpus and model (it was refused,
    # and nothing else rescored it)
    code, out = invoke("project", tmp_path / "r", "--out", tmp_path / "r", "--quiet")
    assert code == 0, out
    assert invoke("select", tmp_path / "r", "--out", tmp_path / "s.jsonl", "-n", 2)[0] == 0
    from autoskill_fast.run.reading import load_run

    run = load_run(tmp_path / "r")
    assert run.scores.projection.shape == (before["n"], 2) and not (tmp_path / "r" / "project.json").exists()
    one_line_error(*invoke("project", tmp_path / "r", "--out", tmp_path / "r"), "already has scores")
    (tmp_path / "r" / "scores.safetensors").unlink()
    # and so does the Python API (it refused: the embedded corpus is not the run's)
    from autoskill_fast import ProjectConfig, project

    project(ProjectConfig(basis=str(tmp_path / "r"), out=str(tmp_path / "r"), quiet=True))
    assert torch.equal(load_run(tmp_path / "r").scores.projection, run.scores.projection)
    (tmp_path / "r" / "scores.safetensors").unlink()
    # the profile command again: it said "already complete" and wrote nothing; now it says how to get what it asks
    model = tiny_model("llama")
    again = ("profile", "--model", model, "--corpus", corpus, "--out", tmp_path / "r", "-k", 2, "--quiet")
    one_line_error(*invoke(*again), "complete without scores", f"autoskill-fast project {tmp_path / 'r'} --out")
    one_line_error(*invoke(*again, "--save-features", "--no-scores"), "kept no features", "--overwrite")
    other = write_jsonl(tmp_path / "o.jsonl", [{"text": "other"}] * 5)
    one_line_error(*invoke("project", tmp_path / "r", "--corpus", other, "--out", tmp_path / "r"),
                   "o.jsonl: is not read as", "its content")
    one_line_error(*invoke("project", tmp_path / "r", "--text-field", "body", "--out", tmp_path / "r"),
                   "text_field 'body' (profiled: 'text')")
    # a shard's run holds some rows: scoring all of the corpus into it is refused
    code, out = invoke("profile", "--model", model, "--corpus", corpus, "--out", tmp_path / "s0", "-k", 2, "--quiet",
                       "--shard", "0/2", "--no-scores")
    assert code == 0, out
    one_line_error(*invoke("project", tmp_path / "s0", "--out", tmp_path / "s0"), "holds some shards of its corpus")


def test_skip_policy_records_skipped_ids(tmp_path, tiny_model):
    model = tiny_model("llama")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "a b c"}, {"text": ""}, {"text": "d e f g"}, {"text": "h i"}])
    code, out = invoke("profile", "--model", model, "--corpus", corpus, "--out", tmp_path / "r", "-k", 1, "--quiet")
    assert code == 2 and "c.jsonl:2: example '1': empty text" in out and "--on-bad-example skip" in out
    code, out = invoke("profile", "--model", model, "--corpus", corpus, "--out", tmp_path / "r", "-k", 1, "--quiet",
                       "--on-bad-example", "skip")
    assert code == 0, out
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["skipped"] == [{"id": "1", "reason": "empty text"}] and run["counts"]["profiled"] == 3


def test_truncation_is_counted(tmp_path, tiny_model, corpus):
    code, out = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus, "--out", tmp_path / "r", "-k", 2,
                       "--max-length", 4)
    assert code == 0, out
    assert json.loads((tmp_path / "r" / "run.json").read_text())["counts"]["truncated"] > 0
    assert "truncated" in out


def one_line_error(code, out, *fragments):
    assert code == 2, out
    assert "Traceback" not in out and out.startswith("error: "), out
    for fragment in fragments:
        assert fragment in out, out


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_model, corpus):
    model = tiny_model("llama")
    base = ("profile", "--model", model, "--out", tmp_path / "r", "--quiet", "-k", 2)
    one_line_error(*invoke(*base, "--corpus", tmp_path / "missing.jsonl"), "missing.jsonl: corpus file not found")
    one_line_error(*invoke(*base, "--corpus", corpus, "--text-field", "body"), "c.jsonl:1", "missing text field 'body'")
    one_line_error(*invoke(*base, "--corpus", corpus, "--layers", "9"), "layer 9 out of range", "4 decoder blocks")
    one_line_error(*invoke(*base, "--corpus", corpus, "--model", tmp_path), "not a Hugging Face model folder")
    one_line_error(*invoke(*base, "--corpus", corpus, "-k", 50), "-k 50 is more directions than the data has")
    (tmp_path / "empty.jsonl").write_text("")
    one_line_error(*invoke(*base, "--corpus", tmp_path / "empty.jsonl"), "empty.jsonl: no record to profile")
    bos_only = write_jsonl(tmp_path / "bos.jsonl", [{"text": "fine text"}, {"text": "<|im_start|>"}])
    one_line_error(*invoke(*base, "--corpus", bos_only, "--out", tmp_path / "b", "-k", 1), "no token left to pool after leaving out position 0")


def test_the_same_files_spelled_another_way_are_the_same_run(tmp_path, tiny_model, corpus, monkeypatch):
    """./c.jsonl for c.jsonl, an absolute path, a model folder with a trailing slash: the rerun was refused as another
    run ("another corpus.path: 'c.jsonl' vs './c.jsonl'"), and only --overwrite, which drops the checkpoint, got on."""
    monkeypatch.chdir(tmp_path)
    model = tiny_model("llama")
    args = ("profile", "--out", "r", "-k", 2, "--quiet")
    assert invoke(*args, "--corpus", "c.jsonl", "--model", model)[0] == 0
    before = (tmp_path / "r" / "basis.safetensors").read_bytes()
    for corpus_spelling, model_spelling in (("./c.jsonl", model), (tmp_path / "c.jsonl", f"{model}/")):
        code, out = invoke(*args, "--corpus", corpus_spelling, "--model", model_spelling)
        assert code == 0, out
    assert (tmp_path / "r" / "basis.safetensors").read_bytes() == before
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["corpus"]["path"] == "c.jsonl"
    other = write_jsonl(tmp_path / "d.jsonl", [{"text": "another corpus"}] * 12)
    one_line_error(*invoke(*args, "--corpus", other, "--model", model), "holds a run", "another corpus.path")


def test_a_run_stopped_by_a_bad_example_resumes_with_skip(tmp_path, tiny_model, monkeypatch):
    """The error says to rerun with --on-bad-example skip; that rerun was refused as another run (the key held the
    policy), and only --overwrite, which drops the checkpoint, got on. The policy changes nothing until an example is
    bad, so the checkpoint is the skip run's as well: it is resumed, and the result is a fresh skip run's."""
    from safetensors.torch import load_file

    from autoskill_fast.run.checkpoint import Checkpoint
    from autoskill_fast.run.folder import run_key, run_key_of
    from autoskill_fast.run.record import RunRecord

    records = [{"text": f"problem {i}: a farmer has {i} cows " * (1 + i % 3)} for i in range(45)]
    records[40]["text"] = ""
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    args = ("-k", 2, "--quiet", "--max-batch-size", 2, "--sort-window", 8, "--checkpoint-every", 3, "--model",
            tiny_model("llama"))
    monkeypatch.chdir(tmp_path)
    one_line_error(*invoke("profile", "--corpus", "c.jsonl", "--out", tmp_path / "r", *args),
                   "example '40': empty text", "rerun with --on-bad-example skip")
    resumed = []
    load = Checkpoint.load_statistics
    monkeypatch.setattr(Checkpoint, "load_statistics", lambda self, *a, **kw: resumed.append(1) or load(self, *a, **kw))
    # resumed from another folder, where c.jsonl is another file: the path typed is read, the recorded one keyed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_jsonl(elsewhere / "c.jsonl", [{"text": f"something else {i}"} for i in range(45)])
    monkeypatch.chdir(elsewhere)
    code, out = invoke("profile", "--corpus", corpus, "--out", tmp_path / "r", "--on-bad-example", "skip", *args)
    assert code == 0, out
    assert resumed, "started over instead of resuming"
    assert invoke("profile", "--corpus", corpus, "--out", tmp_path / "fresh", "--on-bad-example", "skip", *args)[0] == 0
    got, fresh = (load_file(tmp_path / name / "stats.safetensors") for name in ("r", "fresh"))
    for name in fresh:
        torch.testing.assert_close(got[name], fresh[name], rtol=1e-6, atol=1e-6)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["skipped"] == [{"id": "40", "reason": "empty text"}] and run["config"]["on_bad_example"] == "skip"
    # a run keyed by an earlier version, which keyed on the policy: resumed under its own key, with either policy
    config = {**run["config"], "on_bad_example": "error"}
    legacy = RunRecord.from_json({**run, "key": run_key(config, {}, {}, legacy=True), "config": config}, "run.json")
    assert run_key_of({**config, "on_bad_example": "skip"}, {}, {}, legacy) == legacy.key
    resumed_once = RunRecord.from_json({**legacy.to_json(), "config": {**config, "on_bad_example": "skip"}}, "run.json")
    for policy in ("error", "skip"):  # run.json now says skip, the key was made with error: still that run
        assert run_key_of({**config, "on_bad_example": policy}, {}, {}, resumed_once) == legacy.key
    assert run_key_of({**config, "max_length": 7}, {}, {}, legacy) == run_key({**config, "max_length": 7}, {}, {})


def test_a_line_that_cannot_be_read_is_a_bad_example_and_the_run_keeps_what_it_computed(tmp_path, tiny_model,
                                                                                      monkeypatch):
    """A malformed line stopped the run whatever the policy (an error of the reader, not a bad example), and with the
    default checkpoints (every 600 s) it kept nothing: editing the line then made the corpus another one, so the run
    started over. Now the line is a bad example, and the run saves a checkpoint before it stops."""
    from safetensors.torch import load_file

    from autoskill_fast.run.checkpoint import Checkpoint

    lines = [json.dumps({"uid": f"u{i}", "text": f"problem {i}: a farmer has {i} cows " * (1 + i % 3)})
             for i in range(45)]
    lines[40] = '{"uid": "u40", "text": "cut off'
    lines[42] = json.dumps({"text": "no id"})
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    args = ("--corpus", tmp_path / "c.jsonl", "-k", 2, "--quiet", "--max-batch-size", 2, "--sort-window", 8,
            "--id-field", "uid", "--model", tiny_model("llama"))
    code, out = invoke("profile", "--out", tmp_path / "r", *args)
    one_line_error(code, out, "c.jsonl:41: example 'row 40': malformed JSON", "rerun with --on-bad-example skip")
    assert (tmp_path / "r" / "checkpoint").is_dir()
    resumed = []
    load = Checkpoint.load_statistics
    monkeypatch.setattr(Checkpoint, "load_statistics", lambda self, *a, **kw: resumed.append(1) or load(self, *a, **kw))
    assert invoke("profile", "--out", tmp_path / "r", *args, "--on-bad-example", "skip")[0] == 0
    assert resumed, "started over instead of resuming"
    assert invoke("profile", "--out", tmp_path / "fresh", *args, "--on-bad-example", "skip")[0] == 0
    got, fresh = (load_file(tmp_path / name / "stats.safetensors") for name in ("r", "fresh"))
    for name in fresh:
        torch.testing.assert_close(got[name], fresh[name], rtol=1e-6, atol=1e-6)
    skipped = json.loads((tmp_path / "r" / "run.json").read_text())["skipped"]
    assert [entry["id"] for entry in skipped] == ["row 40", "row 42"]
    assert skipped[0]["reason"].startswith("malformed JSON") and "missing id field 'uid'" in skipped[1]["reason"]


def test_bad_model_files_and_devices_give_one_line_errors(tmp_path, tiny_model, corpus):
    """Each of these printed a traceback: an unreadable config.json, a folder without weights, truncated weights, a
    file that is not GGUF, and a CUDA device on a torch that has none."""
    import shutil

    base = ("profile", "--corpus", corpus, "--out", tmp_path / "r", "--quiet", "-k", 2)
    good = tiny_model("llama")
    broken = {}
    for name in ("config", "weights", "truncated"):
        broken[name] = tmp_path / name
        shutil.copytree(good, broken[name])
    (broken["config"] / "config.json").write_text("{x")
    (broken["weights"] / "model.safetensors").unlink()
    weights = broken["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    for name, folder in broken.items():
        one_line_error(*invoke(*base, "--model", folder), f"{folder}: cannot load the model", "check its files")
    gguf = tmp_path / "m.gguf"
    gguf.write_text("garbage")
    one_line_error(*invoke(*base, "--model", gguf), "m.gguf: cannot read this GGUF file")
    if not torch.cuda.is_available():
        one_line_error(*invoke(*base, "--model", good, "--device", "cuda"), "--device cuda: this torch sees no CUDA")


def test_basis_refuses_another_model_and_corrupted_artifacts(tmp_path, tiny_model, corpus):
    code, out = invoke("profile", "--model", tiny_model("llama"), "--corpus", corpus, "--out", tmp_path / "r", "-k", 2, "--quiet")
    assert code == 0, out
    one_line_error(*invoke("project", tmp_path / "r", "--model", tiny_model("qwen2"), "--corpus", corpus,
                           "--out", tmp_path / "p", "--quiet"), "basis was made from model")
    one_line_error(*invoke("project", tmp_path / "r", "--model", tiny_model("llama"), "--corpus", corpus,
                           "--out", tmp_path / "p", "--quiet", "--pooling", "last"), "pooling")
    blob = (tmp_path / "r" / "basis.safetensors").read_bytes()
    (tmp_path / "r" / "basis.safetensors").write_bytes(blob[: len(blob) // 2])
    one_line_error(*invoke("fit", tmp_path / "r", "-k", 1), "basis.safetensors: corrupted or truncated")


def test_non_finite_activations_name_the_example(tmp_path, tiny_model, corpus):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model("llama"), broken)
    weights = load_file(broken / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight"
    weights[key] = torch.full_like(weights[key], float("inf"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    one_line_error(*invoke("profile", "--model", broken, "--corpus", corpus, "--out", tmp_path / "r", "--quiet", "-k", 2),
                   "non-finite activations for example(s) [")


def test_every_command_spells_each_option_once():
    """Options are generated from several configs; two fields may not claim the same flag (click would keep one of
    them silently, with a warning on every call)."""
    for name, command in cli.commands.items():
        flags = [flag for param in command.params for flag in (*param.opts, *param.secondary_opts)]
        repeated = sorted({flag for flag in flags if flags.count(flag) > 1})
        assert not repeated, f"{name}: {repeated}"
        destinations = [param.name for param in command.params]
        assert len(destinations) == len(set(destinations)), name


@pytest.mark.parametrize("command", ["profile", "project", "eval"])
def test_every_option_of_a_torchrun_command_has_a_spelling_torchrun_lets_through(command):
    """torchrun's argument parser reads the whole command line and refuses an abbreviation of its own options even
    after the script's name: `eval --n 8` failed with "ambiguous option: --n could match --nnodes, ..."."""
    from torch.distributed.run import get_args_parser

    def passes(option: str) -> bool:
        try:
            get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "autoskill_fast", command, option, "1"])
        except SystemExit:
            return False
        return True

    blocked = [param.opts for param in cli.commands[command].params
               if param.opts[0].startswith("-") and not any(passes(o) for o in param.opts + param.secondary_opts)]
    assert not blocked
    if command == "eval":
        assert not passes("--n") and passes("-n")  # the case that was found; -n is the documented spelling


def test_mistyped_options_are_one_line_errors_before_any_work(tmp_path, tiny_model, corpus):
    """From an audit of the options: each of these was a traceback, an option silently dropped or ignored, or an
    output written over a file."""
    model = tiny_model("llama")
    run = tmp_path / "run"
    code, out = invoke("profile", "--model", model, "--corpus", corpus, "--out", run, "-k", 2, "--quiet",
                       "--save-features")
    assert code == 0, out
    profile = ("profile", "--model", model, "--corpus", corpus, "--out", tmp_path / "x", "-k", 2, "--quiet")
    for typed, message in (
            (("--eig-tol", "inf"), "--eig-tol: must be a positive number, got inf"),  # failed after the forward pass
            (("--layers", "1,3-2"), "--layers: the range '3-2' in '1,3-2' runs backwards; write it low to high"),
            (("--layers", "1-x"), "--layers: cannot read '1-x'"),  # the parser's message named no option
            (("--device", "meta"), "--device meta: autoskill-fast runs on cpu or cuda"),
            (("--first-token", "drop_bos", "--keep-first-token"), "--first-token drop_bos and --keep-first-token "
                                                                  "contradict each other"),
            (("--first-token", "drop", "--keep-first-token"), "contradict each other"),  # typed as the default is
            (("--layers", "1--2"), "a range cannot run from a block counted from the start to one counted from the "
                                   "end")):
        one_line_error(*invoke(*profile, *typed), message)
    one_line_error(*invoke("profile", "--model", model, "--corpus", corpus, "--out", "", "-k", 2),
                   "--out: is empty")  # the run was written into the current folder
    assert not (tmp_path / "x").exists()
    for value in ("inf", "nan"):
        one_line_error(*invoke("fit", run, "-k", 2, "--eig-tol", value), "tol (--eig-tol) must be a positive number")
    from autoskill_fast import merge
    from autoskill_fast.errors import AutoskillError

    for kwargs, message in ((dict(k=0), r"k \(-k\) must be a positive integer, got 0"),  # was the shards' k
                            (dict(tol=0.0), r"tol \(--eig-tol\) must be a positive number")):
        with pytest.raises(AutoskillError, match=message):
            merge([run, run], tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()
    one_line_error(*invoke("eval", "--model", model, "--out", tmp_path / "e", "--temperature", "nan"),
                   "--temperature: must be 0 (greedy) or more, got nan")  # NaN decoded greedily
    victim = tmp_path / "weights.gguf"
    victim.write_bytes(b"a model's weights")
    steer = ("steer", run)
    for typed, message in ((("--out", victim, "--format", "llamacpp"), "weights.gguf: already exists"),
                           (("--out", tmp_path / "v", "--format", "vector", "--model", model),
                            "--model: is the model a baked checkpoint is made from"),
                           (("--out", tmp_path / "v", "-d", "0:inf"), "--direction: weights must be finite numbers"),
                           (("--out", tmp_path / "v", "--ranking", run, "--sign", "+"), "give either --ranking or "
                                                                                         "--direction / --sign")):
        one_line_error(*invoke(*steer, *typed), message)
    assert victim.read_bytes() == b"a model's weights"
    code, out = invoke("steer", corpus, "--out", tmp_path / "v")
    assert code == 2 and "is a file" in out and "Traceback" not in out
    for typed, message in ((("--method", "pole", "-d", "+0", "--dims", 2), "--dims: shapes the coverage method's "
                                                                            "space, not the pole method's"),
                           (("--top", 2), "--top: picks the best entries of a ranking")):
        one_line_error(*invoke("select", run, "--out", tmp_path / "s.jsonl", "-n", 2, *typed), message)
    # project scores with the run's model when --model is not given, as steer and rank do (it refused the default)
    code, out = invoke("project", run, "--corpus", corpus, "--out", tmp_path / "p", "--quiet")
    assert code == 0 and "scored 12 examples" in out, out
    code, out = invoke("eval", "--model", model, "--out", tmp_path / "e", "--steering", corpus, "--metric", "nll")
    assert code == 2 and f"{corpus}: is a file, not a steering vector" in out, out
    help_text = invoke("profile", "--help")[1]
    assert "--no-scores" in help_text and "Turn off (on by default): Write per-example scores" in " ".join(
        help_text.split())


def test_quiet_keeps_the_warnings_on_stderr(tmp_path, tiny_model):
    """--quiet hid the basis's warnings and the skipped examples with the summary."""
    duplicated = write_jsonl(tmp_path / "d.jsonl", [{"text": "one two three" if i % 2 else "four five six seven"}
                                                    for i in range(8)] + [{"text": ""}])
    result = CliRunner().invoke(cli, ["profile", "--model", str(tiny_model("llama")), "--corpus", str(duplicated),
                                      "--out", str(tmp_path / "r"), "-k", "3", "--quiet", "--on-bad-example", "skip"])
    assert result.exit_code == 0, result.output
    assert "profiled" not in result.stdout and "warning: directions 1-2 explain at most 1e-08" in result.stderr
    assert "skipped 1 example(s)" in result.stderr
