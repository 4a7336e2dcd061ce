"""The package's shape: no import cycles (no module imports one that imports it back, at
module level or inside a function), and a training loop short enough to read in one sitting."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pyfast_gan

ROOT = Path(pyfast_gan.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import name`: the submodule pkg.name when it is one, else pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import a.b.c` names a.b.c
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("pyfast_gan"):
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = _import_graph()
    assert "pyfast_gan.train.loop" in graph and graph["pyfast_gan.train.loop"]  # the walk sees imports
    # Package __init__ files re-export their children; an edge child -> parent package is the
    # child importing a sibling through the package, which is what we look for, so keep it.
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_training_loop_reads_in_one_sitting():
    text = (ROOT / "train" / "loop.py").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, len(lines)
    # The loop only loops: set-up lives in build() and the Run, each step's work in Run methods.
    loop = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "_loop")
    assert loop.end_lineno - loop.lineno + 1 <= 60, loop.end_lineno - loop.lineno + 1
    assert not [n for n in ast.walk(loop) if isinstance(n, (ast.FunctionDef, ast.Lambda)) and n is not loop]
    # one step class: the old per-mode steps are gone
    assert not (ROOT / "train" / "steps.py").exists()
    assert not (ROOT / "fast" / "compile.py").exists()


def test_kernels_import_no_dispatcher():
    # Kernels, launchers and triton_ops only: choosing an impl, autograd and fallbacks live in
    # pyfast_gan/ops/, so a kernel module never reaches back into them.
    graph = _import_graph()
    kernels = [m for m in graph if m.startswith("pyfast_gan.kernels")]
    assert kernels
    for m in kernels:
        assert not {t for t in graph[m] if t.startswith("pyfast_gan.ops")}, m


def test_import_loads_no_native_library():
    # The libraries load on an op's first dispatch to a native impl: importing the package
    # (or its optimizer) costs no dlopen and registers nothing in torch.ops.pyfast_gan.
    code = ("import torch, pyfast_gan, pyfast_gan.optim; from pyfast_gan import _native; "
            "assert _native.load.cache_info().currsize == 0, _native.load.cache_info(); "
            "assert not hasattr(torch.ops.pyfast_gan, 'clip_weights_'); "
            "assert not hasattr(torch.ops.pyfast_gan, 'gradient_norm_penalty')")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_data_imports_nothing_above_it():
    # data/ sits below metrics/, models/ and train/: the data cache's root lives in
    # pyfast_gan._paths, which the digits classifier reads too.
    graph = _import_graph()
    data = [m for m in graph if m.startswith("pyfast_gan.data")]
    assert "pyfast_gan.data.cache" in data
    above = ("pyfast_gan.metrics", "pyfast_gan.models", "pyfast_gan.train", "pyfast_gan.evaluate")
    for m in data:
        assert not {t for t in graph[m] if t.startswith(above)}, (m, graph[m])


def test_readers_of_a_run_do_not_import_the_trainer():
    # sample, evaluate and the study read checkpoints and images through pyfast_gan.artifacts;
    # the step sits below the trainer that drives it.
    graph = _import_graph()
    readers = [m for m in graph if m in ("pyfast_gan.sample", "pyfast_gan.evaluate")
               or m.startswith(("pyfast_gan.experiments", "pyfast_gan.artifacts", "pyfast_gan.step"))]
    assert "pyfast_gan.artifacts.checkpoint" in readers and "pyfast_gan.step.step" in readers
    for m in readers:
        assert not {t for t in graph[m] if t.startswith("pyfast_gan.train")}, (m, graph[m])


def test_loading_a_checkpoint_does_not_import_the_trainer():
    code = ("import sys; from pyfast_gan.artifacts import checkpoint; "
            "assert callable(checkpoint.load); "
            "bad = sorted(m for m in sys.modules if m.startswith(('pyfast_gan.train', 'pyfast_gan.step'))); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_op_module_has_the_same_parts():
    # One template: the public function, ``reference``, ``FAMILY`` (from the one family table)
    # and the registration ``register`` returns, under the same names in every op module.
    import importlib

    from pyfast_gan._families import FAMILIES

    ops = [op for family in FAMILIES.values() for op in family]
    assert sorted(p.stem for p in (ROOT / "ops").glob("*.py") if p.stem in ops) == sorted(ops)
    for op in ops:
        m = importlib.import_module(f"pyfast_gan.ops.{op}")
        assert op in FAMILIES[m.FAMILY], op
        assert callable(getattr(m, op, None) or getattr(m, op + "_")), op
        for part in ("reference", "native_ops", "triton_ops", "resolve_impl"):
            assert callable(getattr(m, part, None)), (op, part)


def test_no_registration_block_written_twice():
    # Fake impls and autograd are registered, and libraries loaded, in one place each; the op
    # modules and the setup script read the family table rather than spelling it out.
    calls: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                calls.setdefault(node.func.attr, []).append(_module_name(path))
    assert calls["register_fake"] == ["pyfast_gan.ops._dispatch"]
    assert set(calls["register_autograd"]) == {"pyfast_gan.ops._dispatch"}
    assert calls["load_library"] == ["pyfast_gan._native"]
    for path in (ROOT / "ops").glob("*.py"):
        assert '"penalty"' not in path.read_text() and '"clip"' not in path.read_text(), path
    setup_py = (ROOT.parent / "setup.py").read_text()
    assert "_families.py" in setup_py and '"penalty"' not in setup_py
