"""The shape of the package: the layers contract, no import cycles, light imports, names that hide no module."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
import textwrap

import pytest

import autoskill_fast


def test_layers_contract_is_kept():
    """Each stage imports only the stages before it (pyproject.toml's import-linter contract)."""
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is not installed: `bash scripts/install.sh --dev` installs import-linter")
    result = subprocess.run([lint], capture_output=True, text=True, cwd=autoskill_fast.__path__[0] + "/..")
    assert result.returncode == 0 and "1 kept, 0 broken" in result.stdout, result.stdout + result.stderr


def _import_graph():
    import grimp

    graph = grimp.build_graph("autoskill_fast")
    return {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_anywhere():
    edges = _import_graph()
    assert len(edges) > 40  # the graph is the package's, not an empty one
    assert _cycles(edges) == []


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_reading_a_basis_imports_neither_triton_nor_transformers(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import torch
        from synthetic_runs import make_run
        make_run(__import__("pathlib").Path({str(tmp_path)!r}) / "run", torch.randn(20, 3))
        heavy = [m for m in sys.modules if m.split(".")[0] in ("triton", "transformers")]
        assert heavy == [], heavy
        import autoskill_fast
        basis = autoskill_fast.SkillBasis.load({str(tmp_path)!r} + "/run")
        scores = basis.project(torch.randn(4, basis.feature_dim))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("triton", "transformers"))
        print("heavy:", heavy, tuple(scores.shape))
    """)
    tests_dir = autoskill_fast.__path__[0] + "/../tests"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tests_dir)
    assert result.returncode == 0, result.stderr
    assert "heavy: [] (4, 3)" in result.stdout, result.stdout


def test_profiling_imports_them_when_used():
    """The converse, so the test above could fail: the capture stage does import the kernels (and Triton with them)."""
    script = ("import sys, autoskill_fast.capture.hooks; "
              "print(any(m.split('.')[0] == 'triton' for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr


def test_no_public_name_hides_a_module():
    """`autoskill_fast.profile` must not be a function that hides a module of that name (and so on, in every
    package): every export is reachable, and so is every module."""
    clashes = []
    for info in pkgutil.walk_packages(autoskill_fast.__path__, "autoskill_fast."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        exported = set(getattr(package, "__all__", ())) | {n for n in vars(package) if not n.startswith("_")}
        clashes += [f"{info.name}.{name}" for name in exported & submodules
                    if not isinstance(getattr(package, name), type(package))]
    top = {m.name for m in pkgutil.iter_modules(autoskill_fast.__path__)}
    clashes += [f"autoskill_fast.{n}" for n in set(autoskill_fast.__all__) & top]
    assert clashes == []


def test_every_export_resolves():
    for name in autoskill_fast.__all__:
        assert getattr(autoskill_fast, name) is not None, name
    with pytest.raises(AttributeError):
        autoskill_fast.no_such_name  # noqa: B018
