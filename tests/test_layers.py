"""The floors of the package: the library core never imports the applications (``ligo_fast.apps``), and the
applications use only the core's public API (``ligo_fast.__all__`` and its public submodules). Read from the source
with ``ast`` (function-local imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

import ligo_fast

PKG = Path(ligo_fast.__file__).resolve().parent
APPS = PKG / "apps"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _core_files() -> list[Path]:
    return [p for p in PKG.rglob("*.py") if APPS not in p.parents and "kernels" not in p.relative_to(PKG).parts]


def test_the_core_never_imports_the_applications():
    assert len(_core_files()) > 10
    bad = [
        f"{p.relative_to(PKG.parent)}:{line} imports {mod} {names}"
        for p in _core_files()
        for mod, names, line in _imports(p)
        if mod == "ligo_fast.apps" or mod.startswith("ligo_fast.apps.") or (mod == "ligo_fast" and "apps" in names)
    ]
    assert not bad, bad


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _public_api(mod: str, names: list[str]) -> bool:
    """Whether ``from mod import names`` (or ``import mod``) takes only the public API: names of ``ligo_fast.__all__``
    (and ``__version__``), or a public submodule (``ligo_fast._PUBLIC_MODULES``) and anything below it."""
    parts = mod.split(".")
    if len(parts) > 1:
        return parts[1] in ligo_fast._PUBLIC_MODULES
    return all(n in ligo_fast.__all__ or n in ligo_fast._PUBLIC_MODULES or n == "__version__" for n in names)


def test_the_public_api_check_tells_internals_apart():
    assert _public_api("ligo_fast", ["grow", "Arch", "ops", "__version__"])
    assert _public_api("ligo_fast.integrations.accelerator", ["ddp_kwargs"])
    assert not _public_api("ligo_fast", ["plan"]) and not _public_api("ligo_fast.factored", ["costs"])
    assert not _public_api("ligo_fast.kernels", ["expand"])


def test_applications_use_only_public_names_of_the_core():
    files = sorted(APPS.rglob("*.py"))
    assert len(files) >= 10
    bad = []
    for p in files:
        where = p.relative_to(PKG.parent)
        core_names = set()  # names bound to core modules, whose private attributes must not be read
        for mod, names, line in _imports(p):
            if not (mod == "ligo_fast" or mod.startswith("ligo_fast.")) or mod.startswith("ligo_fast.apps"):
                continue
            if any(_private(part) for part in mod.split(".")) or any(_private(n) for n in names):
                bad.append(f"{where}:{line} imports {mod} {names}")
            elif not _public_api(mod, names):
                bad.append(f"{where}:{line} imports {mod} {names}: not the public API")
            core_names |= set(names) if names else {mod.split(".")[0]}
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
                if node.value.id in core_names:
                    bad.append(f"{where}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not bad, bad
