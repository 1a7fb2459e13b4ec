"""Every ```python block in a docstring of ``adv_large_batch/`` and ``models/``, and in the
README, runs.

The blocks are read from the source with ``ast`` (module, class and function docstrings),
each gets an id such as ``adv_large_batch/optimizers/lamb.py::LAMB#1``, and all of them run
for real in ONE subprocess (one TensorFlow import), each in a fresh namespace and a fresh
temporary working directory, with ``keras.backend.clear_session()`` in between.  A failure
names the block and shows its traceback, with line numbers of the source file.

A block that genuinely cannot run here (a GPU, ``horovodrun`` with 2 ranks, the network)
starts with ``# not run: needs <what>``; it is compiled, not run.

Run alone: ``.venv/bin/python -m pytest -n 0 -q tests/test_docstring_examples.py``; one
block: ``.venv/bin/python tests/test_docstring_examples.py 'models/resnet.py::resnet#1'``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
import types
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
README = REPO / "README.md"
ROOTS = ("adv_large_batch", "models")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
NOT_RUN = re.compile(r"^# not run: (.*)$")
TIMEOUT_S = 600  # a guard against hangs: each run takes one to three minutes


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced ```python block of one docstring."""

    id: str  # "path::Qualified.name#n", "path::<module>#n" for the module docstring
    path: str  # relative to the repository
    first_line: int  # line of the block's first code line in the file (1-based)
    code: str  # dedented

    @property
    def skip_reason(self) -> str | None:
        """The text after ``# not run:`` on the block's first line, else ``None``."""
        match = NOT_RUN.match(self.code.splitlines()[0]) if self.code.strip() else None
        return match.group(1).strip() if match else None


def _docstring_nodes(tree: ast.Module) -> list[tuple[str, ast.Constant]]:
    """(qualified name, docstring constant) of the module and every class and function."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        body = getattr(node, "body", [])
        first = body[0] if body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            found.append((prefix or "<module>", first.value))
        for child in body:
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{prefix}.{child.name}" if prefix else child.name)

    visit(tree, "")
    return found


def _fenced(doc: str, where: str) -> list[tuple[str, int, list[str]]]:
    """(language, index of the first code line, code lines) of each fence in ``doc``.

    Raises ``ValueError`` naming ``where`` on a fence that is never closed."""
    fences, opened = [], None
    for index, line in enumerate(doc.splitlines()):
        match = FENCE.match(line)
        if not match:
            if opened is not None:
                opened[2].append(line)
        elif opened is None:
            opened = (match.group(2), index + 1, [])
        elif not match.group(2):
            fences.append(opened)
            opened = None
        else:
            raise ValueError(f"{where}: fence opened inside the fence of line {opened[1]}")
    if opened is not None:
        raise ValueError(f"{where}: unterminated ```{opened[0]} fence (docstring line {opened[1]})")
    return fences


def file_blocks(path: Path) -> list[Block]:
    """The ```python blocks of the docstrings of ``path``, in source order."""
    rel = path.relative_to(REPO).as_posix()
    blocks = []
    for name, node in _docstring_nodes(ast.parse(path.read_text(), str(path))):
        fences = _fenced(node.value, f"{rel}::{name}")
        python = [(start, lines) for language, start, lines in fences if language == "python"]
        for number, (start, lines) in enumerate(python, 1):
            code = textwrap.dedent("\n".join(lines)) + "\n"
            first = node.lineno + start  # a docstring's text starts on the quotes' line
            blocks.append(Block(f"{rel}::{name}#{number}", rel, first, code))
    return blocks


#: The README's examples run as written except for their data sizes, cut to test size
#: here (each must occur in the README: ``test_the_readme_has_both_notebook_examples``).
README_TEST_SIZES = {
    'load_text_task("rotten_tomatoes", limit=512)': 'load_text_task("rotten_tomatoes", limit=64)',
    'load_image_task("fashion_mnist", limit=8192)': 'load_image_task("fashion_mnist", limit=512)',
}


def readme_blocks() -> list[Block]:
    """The README's ```python blocks (its notebook examples), ids ``README.md#n``, with
    ``README_TEST_SIZES`` applied."""
    fences = _fenced(README.read_text(), "README.md")
    python = [(start, lines) for language, start, lines in fences if language == "python"]
    blocks = []
    for number, (start, lines) in enumerate(python, 1):
        code = "\n".join(lines) + "\n"
        for as_written, test_size in README_TEST_SIZES.items():
            code = code.replace(as_written, test_size)
        blocks.append(Block(f"README.md#{number}", "README.md", start + 1, code))
    return blocks


def collect_blocks() -> tuple[list[Block], list[str]]:
    """Every ```python block of every docstring under ``ROOTS`` and of the README, and the
    files' fence problems (an unterminated fence)."""
    blocks, problems = [], []
    try:
        blocks += readme_blocks()
    except ValueError as err:
        problems.append(str(err))
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            try:
                blocks += file_blocks(path)
            except (ValueError, SyntaxError) as err:  # an unterminated fence, a broken file
                problems.append(str(err))
    return blocks, problems


def run_block(block: Block) -> str | None:
    """Run ``block`` in a fresh namespace and a fresh working directory: ``None`` if it ran,
    else its traceback (line numbers are the source file's)."""
    import keras

    tree = ast.parse(block.code, block.path)
    ast.increment_lineno(tree, block.first_line - 1)
    module = types.ModuleType("__docstring_example__")  # dataclasses look it up
    sys.modules[module.__name__] = module
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="docstring-example-") as scratch:
        os.chdir(scratch)
        try:
            code = compile(tree, str(REPO / block.path), "exec", dont_inherit=True)
            exec(code, module.__dict__)
        except BaseException as err:  # any failure of the block is its result
            return "".join(
                traceback.format_exception(err.with_traceback(err.__traceback__.tb_next))
            )
        finally:
            os.chdir(here)
            del sys.modules[module.__name__]
            keras.backend.clear_session(free_memory=False)  # gc.collect costs ~0.2 s a block
    return None


def run_all(ids: list[str], results_path: str) -> None:
    """Run the blocks ``ids`` (all if empty) and write ``{id: [seconds, traceback]}``,
    rewritten after every block so a crash still reports the ones before it."""
    blocks = [b for b in collect_blocks()[0] if (not ids or b.id in ids) and not b.skip_reason]
    results: dict[str, list] = {}
    for block in blocks:
        start = time.perf_counter()
        error = run_block(block)
        results[block.id] = [round(time.perf_counter() - start, 2), error]
        Path(results_path).write_text(json.dumps(results))
        print(f"{'ok  ' if error is None else 'FAIL'} {results[block.id][0]:6.2f}s {block.id}")
        if error:
            print(error)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
        KERAS_HOME=tempfile.mkdtemp(prefix="keras-home-"),
    )
    env.pop("HOROVOD_RANK", None)
    env.pop("OMPI_COMM_WORLD_RANK", None)
    return env


BLOCKS, FENCE_PROBLEMS = collect_blocks()


def test_blocks_are_found():
    assert len(BLOCKS) >= 30, [b.id for b in BLOCKS]
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)


def test_no_unterminated_fence():
    assert not FENCE_PROBLEMS, "\n".join(FENCE_PROBLEMS)


def test_fences_are_parsed():
    with pytest.raises(ValueError, match="unterminated"):
        _fenced("Doc.\n\n```python\nx = 1\n", "demo")
    assert _fenced("```python\nx = 1\n```\n```\nplain\n```", "demo") == [
        ("python", 1, ["x = 1"]),
        ("", 4, ["plain"]),
    ]
    skipped = Block("demo", "demo.py", 1, "# not run: needs a GPU\nx = 1\n")
    assert skipped.skip_reason == "needs a GPU"
    assert Block("demo", "demo.py", 1, "x = 1  # not run: no\n").skip_reason is None


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_block_compiles_and_any_skip_says_why(block):
    compile(block.code, block.id, "exec", dont_inherit=True)
    first = block.code.splitlines()[0] if block.code.strip() else ""
    assert block.code.strip(), f"{block.id} is empty"
    if first.lower().lstrip("# ").startswith("not run"):
        assert NOT_RUN.match(first), f"{block.id}: write '# not run: needs <what>', got {first!r}"
        assert re.match(r"needs \S", block.skip_reason), (
            f"{block.id}: the reason must say what it needs: {first!r}"
        )


#: The two runs: the docstrings' blocks (~45 s on 2 idle cores: one TensorFlow import,
#: ScaLA's and ConAdv's traces) and the README's notebook examples (real MiniLM and
#: Fashion-MNIST runs, ~3 minutes), each in its own subprocess so two workers share them.
RUNS = {
    "docstrings": [b.id for b in BLOCKS if b.path != "README.md" and not b.skip_reason],
    "readme": [b.id for b in BLOCKS if b.path == "README.md" and not b.skip_reason],
}


def test_the_readme_has_both_notebook_examples():
    assert len(RUNS["readme"]) == 2, RUNS["readme"]
    code = "".join(b.code for b in BLOCKS if b.path == "README.md")
    assert "ScaLA(" in code and "ConAdv(" in code and code.count("load_model(") == 2
    readme = README.read_text()
    assert all(as_written in readme for as_written in README_TEST_SIZES)


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(RUNS))
def test_every_block_runs(run, tmp_path):
    """All runnable blocks of ``run``, in one subprocess; failures reported block by block."""
    results_path = tmp_path / "results.json"
    expected = RUNS[run]
    cmd = [sys.executable, __file__, "--results", str(results_path), *expected]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"timed out after {TIMEOUT_S} s\n{err.stdout}\n{err.stderr}")
    print(proc.stdout)  # one line per block: ok/FAIL, seconds, id (pytest -rA shows it)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    report = [f"--- {i} ---\n{err}" for i, (_, err) in results.items() if err is not None]
    missing = [i for i in expected if i not in results]
    if missing:
        report.append(
            f"--- never finished (the runner exited {proc.returncode}) ---\n"
            + "\n".join(missing)
            + f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    assert not report, f"{len(report)} example(s) failed:\n" + "\n".join(report)


if __name__ == "__main__":
    args = sys.argv[1:]
    out = os.devnull
    if args[:1] == ["--results"]:
        out, args = args[1], args[2:]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_all(args, out)
