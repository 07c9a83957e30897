"""The package's layers import downwards only: a module may import its own layer or the ones below,
at any depth of the file (an import inside a function counts), and no module imports another's
private names. The map is drawn in docs/architecture.md.
"""

import ast
from pathlib import Path

import mnistgen

PACKAGE = Path(mnistgen.__file__).parent
LAYERS = {  # bottom (0) to top
    "errors": 0, "files": 0, "arrays": 0, "images": 0, "provenance": 0, "weightfiles": 0, "progress": 0, "greylevels": 0,
    "config": 1,
    "diffusion": 1,
    "data": 2, "models": 2, "storage": 2,
    "training": 3,
    "evaluation": 4, "figures": 4,
    "kinds": 5,
    "runs": 6,
    "study": 7, "defaults": 7, "model": 7, "export": 7,
    "api": 8, "demo": 8,
    "cli": 9, "__main__": 9, "__init__": 9,
}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    """Every mnistgen module that ``path`` imports, at any depth of the file (function bodies too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnistgen"):
            base = node.module.removeprefix("mnistgen").lstrip(".")
            found.update(f"{base}.{a.name}".lstrip(".") if not base else base for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("mnistgen.") for a in node.names if a.name.startswith("mnistgen."))
    return {name for name in found if name}


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_every_module_has_a_layer():
    missing = {_module(p).split(".")[0] for p in PACKAGE.rglob("*.py")} - set(LAYERS)
    assert not missing, f"give these a layer in LAYERS: {sorted(missing)}"


def test_imports_go_downwards_only():
    upward = set()
    for path in PACKAGE.rglob("*.py"):
        here = _module(path)
        upward |= {(here, target) for target in _imports(path) if _layer(target) > _layer(here)}
    assert upward == set()


def test_evaluation_and_figures_do_not_import_training():
    """Run directories and checkpoints live in the storage layer: what reads a finished run needs no
    training loop."""
    found = {(_module(path), target) for folder in ("evaluation", "figures") for path in (PACKAGE / folder).rglob("*.py")
             for target in _imports(path) if target.split(".")[0] == "training"}
    assert found == set()


def test_no_module_outside_the_registry_compares_kind_names():
    """What differs between model kinds lives in mnistgen/kinds/; elsewhere the registry is asked.
    Found: a comparison of a kind (``x.kind`` or ``kind``) with a kind's name, e.g. ``kind == "cfg"``
    or ``config.kind in ("vae", "classifier")``."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if _module(path).startswith("kinds"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(map(_is_a_kind, sides)) and any(map(_holds_a_kind_name, sides)):
                    found.append(f"{_module(path)}:{node.lineno}")
    assert found == []


def _is_a_kind(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "kind") or (isinstance(node, ast.Name) and node.id == "kind")


def _holds_a_kind_name(node: ast.AST) -> bool:
    from mnistgen.config import KINDS

    return any(isinstance(n, ast.Constant) and n.value in KINDS for n in ast.walk(node))


def test_no_module_imports_a_private_name_of_another():
    private = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnistgen"):
                private += [f"{_module(path)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []
