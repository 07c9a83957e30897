"""The package's layers import downwards only: a module may import its own layer or the ones below.

Known upward imports wait in KNOWN_UPWARD until the per-kind registry removes them; the list may
only shrink (a listed import that no longer exists fails the test, so it must leave the list).
"""

import ast
from pathlib import Path

import mnistgen

PACKAGE = Path(mnistgen.__file__).parent
LAYERS = {  # bottom (0) to top
    "errors": 0, "files": 0, "arrays": 0, "images": 0,
    "config": 1,
    "data": 2, "models": 2, "diffusion": 2,
    "training": 3,
    "evaluation": 4, "figures": 4,
    "recipes": 5, "study": 6,
    "cli": 7, "__main__": 7, "__init__": 7,
}
KNOWN_UPWARD = {  # (importing module, imported module): evaluation and figures reach the trainer through recipes
    ("evaluation.run_metrics", "recipes"),
    ("figures.diffusion", "recipes"),
    ("figures.render", "recipes"),
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
        for target in _imports(path):
            if _layer(target) > _layer(here):
                upward.add((here, target.split(".")[0] if _layer(target) >= 5 else target))
    assert upward - KNOWN_UPWARD == set(), "new upward imports"
    assert KNOWN_UPWARD - upward == set(), "fixed: remove these from KNOWN_UPWARD"



def test_no_module_imports_a_private_name_of_another():
    private = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnistgen"):
                private += [f"{_module(path)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []
