"""The package is one tree: ``ligo_fast.kernels`` comes from the same checkout as ``ligo_fast``; imports go one way;
the public surface is ``__all__`` and the public submodules, internal modules are not handed out as attributes."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import ligo_fast
import ligo_fast.kernels


def test_kernels_come_from_the_same_tree_as_ligo_fast():
    # ligo_fast/kernels is a link to the top-level kernels/ (the project's layout); an editable install of another
    # clone must not hand this tree's ligo_fast that clone's kernels.
    root = Path(ligo_fast.__file__).resolve().parent.parent
    kernels = Path(ligo_fast.kernels.__file__).resolve()
    assert kernels == root / "kernels" / "__init__.py", (kernels, root)


def _imports() -> dict[str, set[str]]:
    """``{module: ligo_fast modules it imports}``, module-level and function-level imports alike (from the source)."""
    import ast

    pkg = Path(ligo_fast.__file__).resolve().parent
    graph: dict[str, set[str]] = {}
    modules = {
        ".".join(p.relative_to(pkg.parent).with_suffix("").parts).removesuffix(".__init__") for p in pkg.rglob("*.py")
    }
    modules |= {"ligo_fast._C"}  # the compiled extension, built or not (a clean checkout has no .so yet)
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        name = ".".join(parts)
        here = parts if is_pkg else parts[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("ligo_fast")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                if not base.startswith("ligo_fast"):
                    continue
                for a in node.names:  # `from . import ops` needs the module ops, not the package's __init__
                    deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        graph[name] = deps
    return {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}


def test_no_import_cycles_not_even_inside_functions():
    edges = _imports()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_library_core_imports_no_application():
    graph = _imports()
    for mod, deps in graph.items():
        if mod.startswith("ligo_fast.apps"):
            continue
        bad = sorted(d for d in deps if d.startswith("ligo_fast.apps"))
        assert not bad, f"{mod} imports the application(s) {bad}"


# ------------------------------------------------------------------------------------------ the public surface
def test_the_public_names_are_the_ones_their_modules_define():
    assert sorted(ligo_fast.__all__) == sorted(ligo_fast._PUBLIC)  # each name once, each with its module
    assert not [n for n in ligo_fast.__all__ if n.startswith("_")]
    for name in ligo_fast.__all__:
        home = importlib.import_module(f"ligo_fast.{ligo_fast._PUBLIC[name]}")
        assert getattr(ligo_fast, name) is getattr(home, name), name
    for name in ligo_fast._PUBLIC_MODULES:
        assert getattr(ligo_fast, name) is importlib.import_module(f"ligo_fast.{name}"), name
    listed = set(dir(ligo_fast))
    assert set(ligo_fast.__all__) | set(ligo_fast._PUBLIC_MODULES) <= listed
    assert not [n for n in listed if n.startswith("_") and not n.startswith("__")], "private names in dir()"
    # what register_architecture's argument is made of, and the option values, come from the top level
    assert {"Arch", "Module", "Width", "LINEAR", "NORM", "EMBEDDING", "register_architecture"} <= set(ligo_fast.__all__)
    assert "stackbert_noisy" in ligo_fast.DEPTH_INITS and "auto" in ligo_fast.LINEAR_MODES


def test_internal_modules_are_not_handed_out_as_attributes():
    """``ligo_fast.<internal>`` is not an attribute of a fresh ``import ligo_fast`` (a public submodule is, imported
    on first use); an internal module is still importable by its full name."""
    code = (
        "import sys, ligo_fast\n"
        "for name in ('plan', 'produce', 'lean', 'factored', 'extension', 'jit_cache', 'model', 'nope'):\n"
        "    try:\n"
        "        getattr(ligo_fast, name)\n"
        "    except AttributeError as e:\n"
        "        assert str(e) == f\"module 'ligo_fast' has no attribute {name!r}\", e\n"
        "    else:\n"
        "        raise SystemExit(f'ligo_fast.{name} was handed out')\n"
        "assert 'torch' not in sys.modules\n"
        "assert ligo_fast.ops.ligo_expand and ligo_fast.integrations.__name__ == 'ligo_fast.integrations'\n"
        "from ligo_fast import plan\n"
        "import ligo_fast.lean\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr
