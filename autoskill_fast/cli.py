"""The command line: a thin shell. Each verb's options are made from its config dataclass (`options.py`), parsed into
that config, and handed to one library function; the summaries printed here are read from what the library wrote."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path

import click

from .analysis.comparison import CompareConfig
from .analysis.inspection import InspectConfig
from .analysis.selection import SelectConfig
from .config import ProfileConfig, ProjectConfig
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
    return click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")(fn)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autoskill-fast")
def cli():
    """Model-native skills, fast: profile a model over a corpus, fit a skill basis, and use it."""


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
    if not config.quiet:
        click.echo(profile_summary(Path(config.out)))


def profile_summary(folder: Path) -> str:
    """What a finished run did, from its run.json."""
    from .run.folder import RUN_JSON, RunFolder

    record = RunFolder(folder).record()
    counts, timings, basis = record.counts, record.timings, record.basis or {}
    forward_s = timings.get("forward_s", 0.0)
    lines = []
    if "examples" in counts:
        lines.append(f"profiled {counts['examples']} examples ({counts.get('tokens', 0)} tokens) in {forward_s:.1f}s "
                     f"[{timings.get('examples_per_s', 0):.1f} ex/s, {timings.get('tokens_per_s', 0):.0f} tok/s]")
    if counts.get("skipped"):
        lines.append(f"skipped {counts['skipped']} example(s); ids in {folder / RUN_JSON}")
    if counts.get("truncated"):
        lines.append(f"truncated {counts['truncated']} example(s) to {record.pooling.get('max_length')} tokens "
                     "(--max-length)")
    evr = basis.get("explained_variance_ratio") or []
    top = ", ".join(f"{v:.3f}" for v in evr[:5])
    lines.append(f"basis: k={basis.get('k')}, D={len(record.layout.get('layer_ids', [])) * record.layout.get('hidden_size', 0)}; "
                 f"explained variance of the first directions: {top}; top {basis.get('k')} explain {sum(evr):.3f}")
    lines.append(f"wrote {folder}")
    return "\n".join(lines)


@cli.command("fit")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-k", "k", type=int, required=True, help="Number of directions.")
@click.option("--eig-tol", type=float, default=1e-6, show_default=True, help="Relative residual every eigenpair must reach.")
@friendly_errors
def fit_cmd(run_dir, k, eig_tol):
    """Refit RUN_DIR's basis with k directions from its saved statistics (no model needed)."""
    from .jobs.refit import fit

    basis = fit(run_dir, k, tol=eig_tol)
    click.echo(f"refit {run_dir}: k={basis.k}, top {basis.k} explain {float(basis.explained_variance_ratio_.sum()):.3f} "
               "of the variance")
    if not (Path(run_dir) / "scores.safetensors").exists():
        click.echo("no saved features, so the old scores were removed; rescore with `autoskill-fast project`")


@cli.command("merge")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(), help="The merged run's folder.")
@click.option("-k", "k", type=int, default=None, help="Number of directions (default: the shards' k).")
@click.option("--eig-tol", type=float, default=1e-6, show_default=True, help="Relative residual every eigenpair must reach.")
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

    set_threads(threads)
    scores = project(build_config(ProjectConfig, values, skip=("basis",), given=given_params(), basis=basis_dir))
    click.echo(f"scored {len(scores.ids)} examples on {scores.k} directions -> {values['out']}")


# ---- steer, inspect, select, compare ---------------------------------------------------------------------------------


@cli.command("steer")
@click.argument("run_dir", type=click.Path(exists=True))
@config_options(SteerConfig, skip=("run",))
@friendly_errors
def steer_cmd(run_dir, **values):
    """Turn basis directions of RUN_DIR into a steering vector: a baked checkpoint, a llama.cpp GGUF, or the vector."""
    from .steering import SteeringVector, export_steering

    config = build_config(SteerConfig, values, skip=("run",), run=run_dir)
    path = export_steering(config)
    vector = SteeringVector.load(path) if path.is_dir() else None
    where = f"{path} ({config.format})"
    if vector is not None:
        click.echo(f"steering vector of norm {vector.norm():.4g} on {len(vector.layer_ids)} blocks "
                   f"({vector.layer_ids[0]}..{vector.layer_ids[-1]}) -> {where}")
    else:
        click.echo(f"steering vector -> {where}")


@cli.command("inspect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@config_options(InspectConfig, skip=("run",))
@click.option("--show", type=int, default=8, show_default=True, help="Directions summarised in the terminal.")
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
@click.option("--show", type=int, default=10, show_default=True, help="Directions listed in the terminal.")
@friendly_errors
def compare_cmd(run_a, run_b, show, **values):
    """Two models' profiles of one corpus: pole overlap, score correlations, canonical correlations."""
    from .analysis.comparison import compare, format_comparison

    config = build_config(CompareConfig, values, skip=("run_a", "run_b"), run_a=run_a, run_b=run_b)
    comparison = compare(config)
    click.echo(format_comparison(comparison, limit=show))
    for what, path in (("matrices", config.json), ("report", config.html)):
        if path:
            click.echo(f"{what}: {path}")


def main():
    cli()


if __name__ == "__main__":
    main()
