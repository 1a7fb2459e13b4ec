"""The house rules of the layout, read from the source (no import, no TensorFlow):

* every import runs down the layers of the README's layout picture, never up;
* no two modules import each other, directly or round a longer circle;
* no function in ``adv_large_batch/`` or ``models/`` has more than 60 lines of body.

Run alone: ``.venv/bin/python -m pytest tests/test_structure.py -q`` (a second).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).parent.parent

#: Layer of each part, top (the command line) to bottom (plain flags and exit codes); a
#: module may import its own part and the parts below it.  ``models`` is the top-level
#: folder ``models/``, installed as ``adv_large_batch.models``.
LAYERS = {
    "cli": 7,
    "commands": 6,
    "sharpness": 5,
    "scala": 5,
    "conadv": 5,
    "engine": 4,
    "data": 3,
    "optimizers": 3,
    "models": 2,
    "flags": 0,
    "exits": 0,
    "backend_ops": 0,  # what keras.ops lacks, per backend
    "keras_internals": 0,  # the private Keras/TensorFlow names, reached in one place
    "": 0,  # the package itself (__version__)
}
MAX_BODY_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "models":
        parts = ["adv_large_batch", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources() -> dict[str, Path]:
    found = {}
    for root in ("adv_large_batch", "models"):
        for path in sorted((REPO / root).rglob("*.py")):
            found[module_name(path)] = path
    return found


def part(module: str) -> str:
    """``adv_large_batch.engine.trainer`` -> ``engine``."""
    return module.split(".")[1] if module.count(".") else ""


def imports(path: Path, known: dict[str, Path], module: str) -> set[str]:
    """The library modules ``path`` imports, anywhere in it (lazy imports count)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known and name != module}


def graph() -> dict[str, set[str]]:
    known = sources()
    return {name: imports(path, known, name) for name, path in known.items()}


def test_every_import_runs_down_the_layers():
    upward = [
        f"{a} ({part(a) or 'package'}) imports {b} ({part(b) or 'package'})"
        for a, targets in graph().items()
        for b in sorted(targets)
        if LAYERS[part(b)] > LAYERS[part(a)]
    ]
    assert not upward, "imports that run up:\n" + "\n".join(upward)


def test_no_import_circle():
    edges = graph()
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt][-1:]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_function_over_60_lines_of_body():
    long = []
    for name, path in sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            docstring = isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant
            )
            first = body[1] if docstring and len(body) > 1 else body[0]
            lines = node.end_lineno - first.lineno + 1
            if lines > MAX_BODY_LINES:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "functions over 60 lines of body:\n" + "\n".join(long)


def test_the_checks_see_a_real_upward_import_and_a_real_circle(tmp_path):
    """The walker finds what it must (so the tests above cannot pass by seeing nothing)."""
    known = sources()
    assert "adv_large_batch.engine.trainer" in known and "adv_large_batch.models.resnet" in known
    trainer = imports(
        known["adv_large_batch.engine.trainer"], known, "adv_large_batch.engine.trainer"
    )
    assert "adv_large_batch.engine.randomness" in trainer
    fake = tmp_path / "engine_module.py"
    fake.write_text("def f():\n    from adv_large_batch.commands import common\n")
    found = imports(fake, known, "adv_large_batch.engine.fake")
    assert found == {"adv_large_batch.commands.common"}
    assert LAYERS[part("adv_large_batch.commands.common")] > LAYERS["engine"]
