"""The README's Python blocks run as a newcomer pastes them: every ```python block, in order,
in one fresh Python session started in an empty folder."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
TIMEOUT = 300  # seconds for all blocks together


def session_env():
    """The environment of a pasted session: the repository importable, figures off screen,
    and programs compiled at XLA's default optimisation level, as a user's are (the blocks'
    time goes into running their fits, not compiling them; see conftest.py)."""
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_backend_optimization_level")
    ]
    return dict(os.environ, PYTHONPATH=ROOT, MPLBACKEND="Agg", XLA_FLAGS=" ".join(flags))


# The session: each block is compiled with the README's line numbers (so a traceback points
# into README.md) and run in one shared namespace, as if pasted into one interpreter. The
# number of the failing block goes to stderr before its traceback.
DRIVER = textwrap.dedent(
    """
    import json, sys, traceback

    blocks = json.loads(sys.stdin.read())
    namespace = {"__name__": "__main__"}
    for i, (line, source) in enumerate(blocks):
        code = compile("\\n" * (line - 1) + source, "README.md", "exec")
        try:
            exec(code, namespace)
        except BaseException:
            sys.stderr.write(f"\\nREADME block {i} (line {line}) failed:\\n")
            traceback.print_exc()
            sys.stderr.write(f"@@failed-block {i}\\n")
            sys.exit(1)
    """
)


def python_blocks(text):
    """The fenced ```python blocks of a Markdown text, in order, as (first line of code,
    code) pairs; line numbers count from 1."""
    blocks = []
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((line, match.group(1)))
    return blocks


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = x\n")]


def test_readme_python_blocks_run_in_one_session(tmp_path):
    with open(README, encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert blocks, "README.md has no ```python blocks"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER],
            input=json.dumps(blocks),
            cwd=tmp_path,  # files the blocks write land here
            env=session_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode() if isinstance(err.stderr, bytes) else err.stderr
        pytest.fail(f"README blocks took over {TIMEOUT} s\n--- stderr ---\n{stderr or ''}")
    if proc.returncode != 0:
        failed = re.search(r"@@failed-block (\d+)", proc.stderr)
        line, source = blocks[int(failed.group(1))] if failed else (None, "(unknown block)")
        pytest.fail(
            f"README.md block at line {line} raised:\n{source}\n"
            f"--- stderr (exit status {proc.returncode}) ---\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    # The uncertainty block prints what its comments say: the rank-deficient 27-term table
    # says so and claims no term, and both terms of the two-term family are determined.
    out = proc.stdout
    assert "rank-deficient: rank 22 of 27 free parameters" in out, out[-4000:]
    assert "is not determined by the data" in out
    table = [line.split() for line in out.splitlines()]
    rows = {r[0]: r for r in table if len(r) >= 2 and r[0] in ("x*y", "y^2*w", "x^2*y*w^2")}
    assert rows["x^2*y*w^2"][-1] == "undetermined"
    assert rows["x*y"][-1] == "*" and rows["y^2*w"][-1] == "*"


GUIDE = os.path.join(ROOT, "docs", "guide", "own-data.md")


@pytest.mark.slow
def test_guide_python_blocks_run_in_one_session(tmp_path):
    """The documentation's guide to fitting one's own data runs as pasted, like the README."""
    with open(GUIDE, encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert len(blocks) >= 4
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER.replace("README.md", "own-data.md")],
        input=json.dumps(blocks),
        cwd=tmp_path,
        env=session_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "0.999*x*y - 0.999*y^2*w" in proc.stdout  # what the guide says it prints
    # Oja's rule with the initial weights fitted as parameters (started at zero).
    assert "0.999 -0.998" in proc.stdout


@pytest.mark.slow
def test_documentation_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    page = (tmp_path / "site" / "api" / "fitting" / "index.html").read_text()
    assert "steps_per_call" in page  # the reference is generated from the docstrings
