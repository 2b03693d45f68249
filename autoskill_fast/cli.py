"""The command line: a thin shell that parses options into a config and calls one library function per verb."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from .config import CorpusConfig, ModelConfig, PoolingConfig, ProfileConfig
from .corpus import default_corpus_path
from .errors import AutoskillError
from .fitting import fit, merge
from .profile import profile, project


def friendly_errors(fn):
    """Print user errors as one line (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AutoskillError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autoskill-fast")
def cli():
    """Model-native skills, fast: profile a model over a corpus, fit a skill basis, and use it."""


# ---- verbs ----------------------------------------------------------------------------------------------------

DEFAULT_TEMPLATE = "{question}\n{answer}"


def parse_layers(spec: str | None) -> tuple[int, ...] | None:
    """"1,3,5-8,-2" -> (1, 3, 5, 6, 7, 8, -2)."""
    if not spec:
        return None
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                layers.extend(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise AutoskillError(f"--layers: cannot read {part!r}; use e.g. 1,3,5-8 or -2") from None
    return tuple(layers)


def parse_shard(spec: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise AutoskillError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    return i, n


def corpus_options(fn):
    """Options naming the corpus and how each record becomes a text."""
    options = [
        click.option("--corpus", "corpus_path", type=click.Path(), default=None,
                     help="JSONL, Parquet, .txt (one example per line) or a datasets.save_to_disk folder. "
                          "Default: the embedded GSM8K test set."),
        click.option("--format", "corpus_format", default="auto", show_default=True,
                     type=click.Choice(["auto", "jsonl", "parquet", "text", "datasets"])),
        click.option("--text-field", default="text", show_default=True, help="Field holding the text."),
        click.option("--template", default=None, help='Template over several fields, e.g. "{question}\\n{answer}".'),
        click.option("--messages-field", default=None, help="Field of chat messages, rendered with the chat template."),
        click.option("--id-field", default=None, help="Field holding a stable id (default: the row number)."),
        click.option("--limit", type=int, default=None, help="Use only the first N records."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def model_options(fn):
    options = [
        click.option("--model", default=None, help="A Hugging Face model folder or a .gguf file. Default: SmolLM2-135M-Instruct (embedded)."),
        click.option("--dtype", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                     help="auto = bfloat16 on GPU, float32 on CPU."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--trust-remote-code", is_flag=True, help="Run code shipped with the model folder."),
        click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def pooling_options(fn):
    options = [
        click.option("--layers", default=None, help="Decoder blocks to pool, e.g. 1-28 or 5,10,-2. Default: 1 .. L-2."),
        click.option("--pooling", default="mean", show_default=True, type=click.Choice(["mean", "last", "response_mean"])),
        click.option("--no-skip-bos", is_flag=True, help="Keep a leading BOS token in the mean."),
        click.option("--layer-scaling", default="none", show_default=True, type=click.Choice(["none", "l2", "pilot"]),
                     help="Per-layer scaling before concatenation."),
        click.option("--max-length", type=int, default=None, help="Truncate examples to N tokens (counted and reported)."),
        click.option("--token-budget", type=int, default=None, help="Padded tokens per batch (default: 512 on CPU, 32768 on GPU)."),
        click.option("--max-batch-size", type=int, default=64, show_default=True),
        click.option("--sort-window", type=int, default=4096, show_default=True, help="Examples sorted by length at a time."),
        click.option("--padding-side", default="right", show_default=True, type=click.Choice(["right", "left"])),
        click.option("--on-bad-example", default="error", show_default=True, type=click.Choice(["error", "skip"])),
        click.option("--quiet", is_flag=True, help="No progress bar or summary."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_profile_config(out, k, corpus_path, corpus_format, text_field, template, messages_field, id_field, limit,
                         model, dtype, device, trust_remote_code, layers, pooling, no_skip_bos, layer_scaling,
                         max_length, token_budget, max_batch_size, sort_window, padding_side, on_bad_example, quiet,
                         **extra) -> ProfileConfig:
    if corpus_path is None:
        corpus_path = str(default_corpus_path())
        if template is None and messages_field is None:
            template = DEFAULT_TEMPLATE
    return ProfileConfig(
        corpus=CorpusConfig(corpus_path, corpus_format, text_field, template, messages_field, id_field, limit),
        out=out,
        model=ModelConfig(model, dtype, device, trust_remote_code),
        pooling=PoolingConfig(pooling, parse_layers(layers), not no_skip_bos, layer_scaling, max_length),
        k=k,
        token_budget=token_budget,
        max_batch_size=max_batch_size,
        sort_window=sort_window,
        padding_side=padding_side,
        on_bad_example=on_bad_example,
        quiet=quiet,
        **extra,
    )


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@cli.command("profile")
@click.option("--out", required=True, type=click.Path(), help="Output folder (rerun the same command to resume).")
@click.option("-k", "k", type=int, default=64, show_default=True, help="Number of skill directions.")
@corpus_options
@model_options
@pooling_options
@click.option("--save-features", is_flag=True, help="Keep the pooled features (sharded safetensors).")
@click.option("--features-dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--no-scores", is_flag=True, help="Skip per-example scores (saves the temporary feature copy).")
@click.option("--checkpoint-every", type=int, default=None, help="Also checkpoint every N batches (default: by time).")
@click.option("--checkpoint-seconds", type=float, default=600, show_default=True,
              help="Checkpoint at least this often (stretched so that saving costs at most 1% of the run).")
@click.option("--shard", default="0/1", show_default=True, help="Profile the i-th of n slices; combine with `merge`.")
@click.option("--eig-tol", type=float, default=1e-6, show_default=True, help="Relative residual of every eigenpair.")
@click.option("--sketch-size", type=int, default=None,
              help="Keep a Frequent Directions sketch of this many rows instead of the exact packed D x D second moment "
                   "(D^2 / 2 numbers).")
@friendly_errors
def profile_cmd(threads, save_features, features_dtype, no_scores, checkpoint_every, checkpoint_seconds, shard, eig_tol,
                sketch_size, **kw):
    """Profile a model over a corpus: pooled activations -> streaming covariance -> skill basis (+ scores)."""
    set_threads(threads)
    config = build_profile_config(**kw, save_features=save_features, features_dtype=features_dtype, scores=not no_scores,
                                  checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                                  shard=parse_shard(shard), eig_tol=eig_tol, sketch_size=sketch_size)
    profile(config)


@cli.command("fit")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-k", "k", type=int, required=True, help="Number of directions.")
@click.option("--eig-tol", type=float, default=1e-6, show_default=True)
@friendly_errors
def fit_cmd(run_dir, k, eig_tol):
    """Refit RUN_DIR's basis with k directions from its saved statistics (no model needed)."""
    basis = fit(run_dir, k, tol=eig_tol)
    click.echo(f"refit {run_dir}: k={basis.k}, top {basis.k} explain {float(basis.explained_variance_ratio_.sum()):.3f} of the variance")
    if not (Path(run_dir) / "scores.safetensors").exists():
        click.echo("no saved features, so the old scores were removed; rescore with `autoskill-fast project`")


@cli.command("merge")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path())
@click.option("-k", "k", type=int, default=None, help="Number of directions (default: the shards' k).")
@click.option("--eig-tol", type=float, default=1e-6, show_default=True)
@friendly_errors
def merge_cmd(run_dirs, out, k, eig_tol):
    """Merge the statistics of `profile --shard i/n` runs exactly and fit one basis."""
    basis = merge(list(run_dirs), out, k=k, tol=eig_tol)
    click.echo(f"merged {len(run_dirs)} runs ({basis.n_samples_} examples) into {out}: k={basis.k}")


@cli.command("project")
@click.argument("basis_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Folder for scores.safetensors / scores.json.")
@corpus_options
@model_options
@pooling_options
@friendly_errors
def project_cmd(basis_dir, threads, **kw):
    """Score a corpus against an existing basis (refuses a basis from another model or pooling)."""
    set_threads(threads)
    scores = project(basis_dir, build_profile_config(k=1, **kw))
    click.echo(f"scored {len(scores.ids)} examples on {scores.k} directions -> {kw['out']}")



def parse_direction(spec: str) -> tuple[int, float]:
    """"3" -> (3, 1.0); "3:-0.5" -> (3, -0.5)."""
    index, _, weight = spec.partition(":")
    try:
        return int(index), float(weight) if weight else 1.0
    except ValueError:
        raise AutoskillError(f"--direction: cannot read {spec!r}; use an index, or INDEX:WEIGHT such as 3:-0.5") from None


@cli.command("steer")
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--direction", "-d", "directions", multiple=True, default=("0",), show_default=True,
              help="Basis direction, INDEX or INDEX:WEIGHT; repeat to combine (e.g. -d 0 -d 3:-0.5).")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Scale along the unit-norm direction (the paper: 0.5).")
@click.option("--sign", type=click.Choice(["+", "-"]), default="+", show_default=True, help="Towards (+) or away from (-) it.")
@click.option("--layers", default=None, help="Steer only these blocks, e.g. 1-28 or 5,10 (default: every block of the basis).")
@click.option("--keep-layer-scale", is_flag=True, help="Do not undo a pilot per-layer scale of the basis (see docs).")
@click.option("--out", required=True, type=click.Path(), help="Output folder (must not exist, or be empty).")
@click.option("--model", default=None, help="Model folder or .gguf to bake (default: the model RUN_DIR profiled).")
@click.option("--format", "fmt", type=click.Choice(["hf", "llamacpp", "vector"]), default="hf", show_default=True,
              help="hf: a model folder transformers and vLLM serve as is; llamacpp: a control-vector GGUF; vector: the vector.")
@click.option("--no-verify", is_flag=True, help="hf: do not reload the baked model to compare it with hook steering.")
@friendly_errors
def steer_cmd(run_dir, directions, alpha, sign, layers, keep_layer_scale, out, model, fmt, no_verify):
    """Turn basis directions of RUN_DIR into a steering vector: a baked checkpoint, a llama.cpp GGUF, or the vector."""
    from .steering import SteerConfig, SteeringVector, export_steering

    parsed = [parse_direction(d) for d in directions]
    config = SteerConfig(run=run_dir, out=out, directions=tuple(i for i, _ in parsed), weights=tuple(w for _, w in parsed),
                         alpha=alpha, sign=1 if sign == "+" else -1, layers=parse_layers(layers),
                         unscale=not keep_layer_scale, model=model, format=fmt, verify=not no_verify)
    path = export_steering(config)
    vector = SteeringVector.load(path)
    click.echo(f"steering vector of norm {vector.norm():.4g} on {len(vector.layer_ids)} blocks "
               f"({vector.layer_ids[0]}..{vector.layer_ids[-1]}) -> {path} ({fmt})")


def _parse_pair(spec: str) -> tuple[int, int]:
    """"0,1" -> (0, 1)."""
    parts = spec.split(",")
    try:
        first, second = (int(p) for p in parts)
    except ValueError:
        raise AutoskillError(f"--scatter: cannot read {spec!r}; give two direction indices, e.g. 0,1") from None
    return first, second


@cli.command("inspect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the HTML report (default: RUN_DIR/report.html).")
@click.option("--no-html", is_flag=True, help="Write no HTML report.")
@click.option("-n", "--n-examples", type=int, default=5, show_default=True, help="Examples at each end of each direction.")
@click.option("--scatter", default="0,1", show_default=True, help="The two directions of the report's scatter plot.")
@click.option("--labeling-prompts", type=click.Path(dir_okay=False), default=None,
              help="Write one contrastive labeling prompt per direction to this JSONL, ready to send to any LLM.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help='Read labels ({"direction", "label"} JSONL, a JSON list, or one per line) into the report and basis.')
@click.option("--compare", "compare_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Another model's profile of the same corpus: adds the compare section.")
@click.option("--corpus", type=click.Path(exists=True), default=None, help="The corpus, if it moved since profiling.")
@click.option("--show", type=int, default=8, show_default=True, help="Directions summarised in the terminal.")
@friendly_errors
def inspect_cmd(run_dir, html_path, no_html, n_examples, scatter, labeling_prompts, labels, compare_dir, corpus, show):
    """What each direction of RUN_DIR means: explained variance and pole examples; the HTML report; labeling."""
    from .compare import format_comparison
    from .report import InspectConfig, format_directions, inspect

    result = inspect(InspectConfig(run=run_dir, html=html_path, no_html=no_html, n_examples=n_examples,
                                   scatter=_parse_pair(scatter), labeling_prompts=labeling_prompts, labels=labels,
                                   compare=compare_dir, corpus=corpus))
    click.echo(format_directions(result.directions, limit=show))
    if result.comparison is not None:
        click.echo(format_comparison(result.comparison))
    if result.labels_saved:
        click.echo(f"labels saved into the basis in {run_dir}")
    for what, path in (("labeling prompts", result.prompts), ("report", result.html)):
        if path is not None:
            click.echo(f"{what}: {path}")


@cli.command("select")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="JSONL of the selected records, in selection order (the manifest goes beside it).")
@click.option("--budget", "-n", type=int, required=True, help="How many examples to select.")
@click.option("--method", type=click.Choice(["coverage", "pole", "random", "text"]), default="coverage", show_default=True,
              help="coverage: greedy k-center in the whitened score space; pole: the ends of directions; "
                   "random / text: baselines (seeded uniform; k-center on TF-IDF).")
@click.option("--direction", "-d", "directions", multiple=True,
              help="pole: +I or -I (one end of direction I) or I (both ends); repeat or comma-separate.")
@click.option("--by", type=click.Choice(["projection", "cosine"]), default="projection", show_default=True,
              help="pole: rank by the centered projection or by the paper's cosine.")
@click.option("--dims", type=int, default=None, help="coverage: use the first DIMS directions (default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="random / text: the seed.")
@click.option("--text-dim", type=int, default=256, show_default=True, help="text: TF-IDF projected to this many dims.")
@click.option("--corpus", type=click.Path(exists=True), default=None, help="The corpus, if it moved since profiling.")
@click.option("--threads", type=int, default=None, help="Torch threads.")
@friendly_errors
def select_cmd(run_dir, out, budget, method, directions, by, dims, seed, text_dim, corpus, threads):
    """Select training data from RUN_DIR's scores: along directions, for coverage, or a baseline."""
    from .select import SelectConfig, manifest_path, select

    set_threads(threads)
    selection = select(SelectConfig(run=run_dir, out=out, budget=budget, method=method, directions=tuple(directions),
                                    by=by, dims=dims, seed=seed, text_dim=text_dim, corpus=corpus))
    counts = selection.manifest["counts"]
    click.echo(f"selected {counts['selected']} of {counts['candidates']} examples ({method}) in "
               f"{selection.manifest['timings']['select_s']:.2f}s -> {out} (manifest: {manifest_path(out)})")


@cli.command("compare")
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.option("--n-pole", type=int, default=50, show_default=True, help="Examples per pole in the Jaccard overlaps.")
@click.option("--by", type=click.Choice(["projection", "cosine"]), default="projection", show_default=True,
              help="Scores that define poles and correlations.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the matrices here.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None, help="Write an HTML report here.")
@click.option("--show", type=int, default=10, show_default=True, help="Directions listed in the terminal.")
@friendly_errors
def compare_cmd(run_a, run_b, n_pole, by, json_path, html_path, show):
    """Two models' profiles of one corpus: pole overlap, score correlations, canonical correlations."""
    from .compare import CompareConfig, compare, format_comparison

    comparison = compare(CompareConfig(run_a=run_a, run_b=run_b, n_pole=n_pole, by=by, json=json_path, html=html_path))
    click.echo(format_comparison(comparison, limit=show))
    for what, path in (("matrices", json_path), ("report", html_path)):
        if path:
            click.echo(f"{what}: {path}")


def main():
    cli()


if __name__ == "__main__":
    main()
