"""The command line: a thin shell. Each verb's options are made from its config dataclass (`options.py`), parsed into
that config, and handed to one library function; the summaries printed here are read from what the library wrote."""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import click

from .analysis.comparison import CompareConfig
from .analysis.inspection import InspectConfig
from .analysis.selection import SelectConfig
from .config import FeatureScaling, ProfileConfig, ProjectConfig, choices
from .evaluation.job import EvalConfig
from .proxies.job import RankConfig
from .run.ranking import alpha_label
from .errors import AutoskillError
from .options import build_config, config_options, given_params
from .steering.export import SteerConfig


def friendly_errors(fn):
    """Print user errors as one line (no traceback) and exit with status 2; warnings as one line each."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _one_line_warnings()
        try:
            return fn(*args, **kwargs)
        except AutoskillError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None):
        click.echo(f"warning: {message}", err=True)

    warnings.showwarning = show
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("autoskill_fast")
    if not log.handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def threads_option(fn):
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="CPU threads for torch (default: torch's choice).")(fn)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autoskill-fast")
def cli():
    """Model-native skills, fast: profile a model over a corpus, fit a skill basis, and use it."""
    # The command line is the application: nothing is looked up on the hub (every model is a local folder or GGUF
    # file), and transformers' load reports and progress bars stay quiet (read when transformers is imported).
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)


# ---- profile, fit, merge, project ----------------------------------------------------------------------------------


@cli.command("profile")
@config_options(ProfileConfig)
@threads_option
@friendly_errors
def profile_cmd(threads, **values):
    """Profile a model over a corpus: pooled activations -> streaming covariance -> skill basis (+ scores)."""
    from .jobs.profiling import profile

    set_threads(threads)
    config = build_config(ProfileConfig, values)
    if config.quiet:
        logging.getLogger("autoskill_fast").setLevel(logging.WARNING)
    profile(config)
    summary, notices = profile_summary(Path(config.out))
    if not config.quiet:
        click.echo(summary)
    for notice in notices:  # under --quiet too: what went wrong or is suspect
        click.echo(notice, err=True)


def profile_summary(folder: Path) -> tuple[str, list[str]]:
    """What a finished run did, from its run.json: the summary, and the notices (skipped and truncated examples, the
    basis's warnings) that go to stderr."""
    from .run.folder import RUN_JSON, RunFolder

    record = RunFolder(folder).record()
    counts, timings, basis = record.counts, record.timings, record.basis or {}
    forward_s = timings.get("forward_s", 0.0)
    lines, notices = [], []
    if "examples" in counts:
        lines.append(f"profiled {counts['examples']} examples ({counts.get('tokens', 0)} tokens) in {forward_s:.1f}s "
                     f"[{timings.get('examples_per_s', 0):.1f} ex/s, {timings.get('tokens_per_s', 0):.0f} tok/s]")
    if counts.get("skipped"):
        notices.append(f"skipped {counts['skipped']} example(s); ids in {folder / RUN_JSON}")
    if counts.get("truncated"):
        notices.append(f"truncated {counts['truncated']} example(s) to {record.pooling.get('max_length')} tokens "
                       "(--max-length)")
    evr = basis.get("explained_variance_ratio") or []
    top = ", ".join(f"{v:.3f}" for v in evr[:5])
    dim = len(record.layout.get("layer_ids", [])) * record.layout.get("hidden_size", 0)
    lines.append(f"basis: k={basis.get('k')}, D={dim}, scaling {basis.get('scaling', 'none')}; explained variance of "
                 f"the first directions: {top}; top {basis.get('k')} explain {sum(evr):.3f}")
    notices.extend(f"warning: {warning}" for warning in basis.get("warnings", []))
    lines.append(f"wrote {folder}")
    return "\n".join(lines), notices


@cli.command("fit")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-k", "k", type=click.IntRange(min=1), required=True, help="Number of directions.")
@click.option("--eig-tol", type=float, default=1e-6, show_default=True,
              help="Relative residual every eigenpair must reach.")
@click.option("--scaling", type=click.Choice(choices(FeatureScaling)), default=None,
              help="Feature scaling, from the saved statistics: none, layer or coordinate (default: the run's).")
@friendly_errors
def fit_cmd(run_dir, k, eig_tol, scaling):
    """Refit RUN_DIR's basis with k directions (and a scaling) from its saved statistics (no model needed)."""
    from .jobs.refit import fit

    basis = fit(run_dir, k, tol=eig_tol, scaling=scaling)
    evr = basis.explained_variance_ratio_
    click.echo(f"refit {run_dir}: k={basis.k}, scaling {basis.scaling}; direction 0 explains {float(evr[0]):.3f}, the "
               f"top {basis.k} {float(evr.sum()):.3f} of the variance")
    for warning in basis.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not (Path(run_dir) / "scores.safetensors").exists():
        click.echo(f"no saved features, so the old scores were removed; rescore with `autoskill-fast project {run_dir} "
                   f"--out {run_dir}`")


@cli.command("merge")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="The merged run's folder.")
@click.option("-k", "k", type=click.IntRange(min=1), default=None, help="Number of directions (default: the shards' k).")
@click.option("--eig-tol", type=float, default=1e-6, show_default=True,
              help="Relative residual every eigenpair must reach.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in the output folder instead of refusing.")
@friendly_errors
def merge_cmd(run_dirs, out, k, eig_tol, overwrite):
    """Merge the statistics of `profile --shard i/n` runs exactly and fit one basis."""
    from .jobs.merging import merge

    basis = merge(list(run_dirs), out, k=k, tol=eig_tol, overwrite=overwrite)
    click.echo(f"merged {len(run_dirs)} runs ({basis.n_samples_} examples) into {out}: k={basis.k}")


@cli.command("project")
@click.argument("basis_dir", type=click.Path(exists=True, file_okay=False))
@config_options(ProjectConfig, skip=("basis",))
@threads_option
@friendly_errors
def project_cmd(basis_dir, threads, **values):
    """Score a corpus against an existing basis (its model and pooling; another model or pooling is refused)."""
    from .jobs.projection import project
    from .run.folder import load_basis

    set_threads(threads)
    start_from, fixed = {"pooling": load_basis(basis_dir).pooling_config}, {}
    if Path(values["out"]).resolve() == Path(basis_dir).resolve():  # scoring a run in place: its own corpus and model
        start_from, fixed = run_inputs(basis_dir, start_from, given_params())
    config = build_config(ProjectConfig, values, skip=("basis",), given=given_params(), start_from=start_from,
                          basis=basis_dir, **fixed)
    summary = project(config)
    click.echo(f"scored {summary['n']} examples -> {values['out']}")


def run_inputs(run_dir: str, start_from: dict, given: set[str]) -> tuple[dict, dict]:
    """For `project RUN --out RUN`: the options not typed are the run's own (its corpus and how it was read, its model
    and dtype, its --on-bad-example), so that the scores are of its rows. Not --trust-remote-code: typed each time."""
    from .config import ModelConfig
    from .run.folder import RunFolder

    folder = RunFolder(run_dir)
    if not folder.has_record():
        return start_from, {}
    record = folder.record()
    model = {k: v for k, v in (record.config.get("model") or {}).items() if k in ("model", "dtype")}
    fixed = {} if "on_bad_example" in given else {"on_bad_example": record.config.get("on_bad_example", "error")}
    return {**start_from, "corpus": record.corpus_reading(), "model": ModelConfig(**model)}, fixed


# ---- steer, inspect, select, compare ---------------------------------------------------------------------------------


@cli.command("steer")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@config_options(SteerConfig, skip=("run",))
@friendly_errors
def steer_cmd(run_dir, **values):
    """Turn basis directions of RUN_DIR into a steering vector: a baked checkpoint, a llama.cpp GGUF, or the vector."""
    from .steering import SteeringVector, export_steering
    from .steering.export import build_vector

    given = given_params()
    if values.get("ranking") is not None and given & {"directions", "sign", "weights"}:  # typed as the defaults are
        raise AutoskillError("the ranking gives the directions and signs; give either --ranking or --direction / "
                             "--sign, not both")
    config = build_config(SteerConfig, values, skip=("run",), run=run_dir)
    path = export_steering(config)
    vector = SteeringVector.load(path) if path.is_dir() else build_vector(config)
    click.echo(f"steering vector of norm {vector.norm():.4g} on {len(vector.layer_ids)} blocks "
               f"({vector.layer_ids[0]}..{vector.layer_ids[-1]}) -> {path} ({config.format})")


@cli.command("inspect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@config_options(InspectConfig, skip=("run",))
@click.option("--show", type=click.IntRange(min=0), default=8, show_default=True,
              help="Directions summarised in the terminal.")
@friendly_errors
def inspect_cmd(run_dir, show, **values):
    """What each direction of RUN_DIR means: explained variance and pole examples; the HTML report; labeling."""
    from .analysis.comparison import format_comparison
    from .analysis.inspection import format_directions, inspect

    result = inspect(build_config(InspectConfig, values, skip=("run",), run=run_dir))
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
@config_options(SelectConfig, skip=("run",))
@threads_option
@friendly_errors
def select_cmd(run_dir, threads, **values):
    """Select training data from RUN_DIR's scores: along directions, for coverage, or a baseline."""
    from .analysis.selection import manifest_path, select

    set_threads(threads)
    config = build_config(SelectConfig, values, skip=("run",), run=run_dir)
    selection = select(config)
    counts = selection.manifest["counts"]
    click.echo(f"selected {counts['selected']} of {counts['candidates']} examples ({config.method}) in "
               f"{selection.manifest['timings']['select_s']:.2f}s -> {config.out} (manifest: {manifest_path(config.out)})")


@cli.command("compare")
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@config_options(CompareConfig, skip=("run_a", "run_b"))
@click.option("--show", type=click.IntRange(min=0), default=10, show_default=True,
              help="Directions listed in the terminal.")
@friendly_errors
def compare_cmd(run_a, run_b, show, **values):
    """Two profiles of one corpus (two models, or two runs of one): pole overlap, score correlations, canonical
    correlations against a permutation null."""
    from .analysis.comparison import compare, format_comparison

    config = build_config(CompareConfig, values, skip=("run_a", "run_b"), run_a=run_a, run_b=run_b)
    comparison = compare(config)
    click.echo(format_comparison(comparison, limit=show))
    for what, path in (("matrices", config.json), ("report", config.html)):
        if path:
            click.echo(f"{what}: {path}")


# ---- eval -------------------------------------------------------------------------------------------------------------


@cli.command("eval")
@config_options(EvalConfig)
@threads_option
@friendly_errors
def eval_cmd(threads, **values):
    """Pass@k of a model on math problems with verified answers (or the NLL of their gold solutions)."""
    from .evaluation.job import evaluate

    set_threads(threads)
    config = build_config(EvalConfig, values)
    if config.quiet:
        logging.getLogger("autoskill_fast").setLevel(logging.WARNING)
    result = evaluate(config)
    click.echo(eval_summary(result.record))


def eval_summary(record: dict) -> str:
    """An evaluation's numbers in a few lines, from its eval.json."""
    counts, timings = record.get("counts", {}), record.get("timings", {})
    lines = [f"{counts.get('problems')} problems ({record['problems']['split']} of {Path(record['problems']['corpus']['path']).name})"]
    for k, est in (record.get("pass_at_k") or {}).items():
        lines.append(f"pass@{k} = {est['value']:.4f}  [{est['low']:.4f}, {est['high']:.4f}] (95% over problems)")
    if record.get("nll"):
        est = record["nll"]
        lines.append(f"gold-solution NLL = {est['value']:.4f} nats/token  [{est['low']:.4f}, {est['high']:.4f}]")
    if "samples" in counts:
        lines.append(f"{counts['samples']} samples, {counts['correct']} correct, {counts['grader_timeouts']} grader "
                     f"timeouts; {timings.get('tokens_per_s', 0):.0f} tokens/s")
    for k, est in (record.get("against_baseline") or {}).items():
        lines.append(f"against the baseline: {k} difference {est['value']:+.4f}  [{est['low']:+.4f}, {est['high']:+.4f}]")
    return "\n".join(lines)


# ---- rank -------------------------------------------------------------------------------------------------------------


@cli.command("rank")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@config_options(RankConfig, skip=("run", "problems.split"))
@threads_option
@friendly_errors
def rank_cmd(run_dir, threads, **values):
    """Which directions of RUN_DIR help, with which sign: the paper's proxies -> RUN_DIR/ranking.json."""
    from .proxies.job import rank

    set_threads(threads)
    config = build_config(RankConfig, values, skip=("run", "problems.split"), run=run_dir)
    if config.quiet:
        logging.getLogger("autoskill_fast").setLevel(logging.WARNING)
    ranking = rank(config)
    click.echo(format_ranking(ranking))
    click.echo(f"wrote {Path(run_dir) / 'ranking.json'}")


def format_ranking(ranking, limit: int = 10) -> str:
    joint = ranking.joint
    lines = [f"{ranking.proxy} proxy, metric {ranking.metric}: {len(ranking.entries)} (direction, sign) entries, "
             f"best first ({'own and joint ' if joint else ''}95% intervals)"]
    for e in ranking.entries[:limit]:
        alpha = f" alpha {alpha_label(e.alpha)} ({e.alpha_unit})" if e.alpha is not None else ""
        mark = "  **" if e.jointly_significant else "  *" if e.significant else ""
        together = f"  joint [{e.joint_low:+.4f}, {e.joint_high:+.4f}]" if joint else ""
        lines.append(f"  {e.pole:>4}{alpha}: {e.effect:+.4f}  [{e.low:+.4f}, {e.high:+.4f}]{together}  "
                     f"{e.statistic}{mark}")
    if len(ranking.entries) > limit:
        lines.append(f"  ... and {len(ranking.entries) - limit} more in ranking.json (and the report)")
    marks = "* its own interval lies above zero, ** its joint interval too" if joint else \
        "* the interval lies above zero"
    lines.append(f"  ({marks}; {ranking.multiplicity_note})")
    lines.extend(f"note: {note}" for note in ranking.notes)
    return "\n".join(lines)


def main():
    """The console entry point. Under torchrun a rank ends through `end_process` (no interpreter teardown, which can
    abort a finished rank; see there); a plain run exits as usual."""
    from .jobs.world import end_process, several_ranks

    try:
        cli()
    except SystemExit as e:  # click ends every command with sys.exit
        end_process(e.code)
    except BaseException:  # not an AutoskillError (those are one line and status 2): a bug, an out-of-memory
        if not several_ranks():
            raise
        traceback.print_exc()  # as Python prints it, before the process ends without its teardown
        end_process(1)
    end_process(0)


if __name__ == "__main__":
    main()
