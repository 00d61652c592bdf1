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
# into README.md) and run in one shared namespace, as if pasted into one interpreter; what it
# prints is echoed and kept as `printed`, and the block's check (if any) then runs in the same
# namespace. The number of the failing block goes to stderr before its traceback.
DRIVER = textwrap.dedent(
    """
    import io, json, sys, traceback

    class Tee(io.StringIO):
        def write(self, text):
            sys.__stdout__.write(text)
            return super().write(text)

    blocks = json.loads(sys.stdin.read())
    namespace = {"__name__": "__main__"}
    for i, (line, source, *check) in enumerate(blocks):
        code = compile("\\n" * (line - 1) + source, "README.md", "exec")
        try:
            sys.stdout = tee = Tee()
            try:
                exec(code, namespace)
            finally:
                sys.stdout = sys.__stdout__
            if check and check[0]:
                namespace["printed"] = tee.getvalue()
                exec(check[0], namespace)
        except BaseException:
            sys.stderr.write(f"\\nREADME block {i} (line {line}) failed:\\n")
            traceback.print_exc()
            sys.stderr.write(f"@@failed-block {i}\\n")
            sys.exit(1)
    """
)

# What the README says its blocks print or produce, checked after each block (`printed` is
# what the block printed). Each key is a line found in exactly one block.
CHECKS = {
    # The quick start: Oja's rule recovered from noiseless activity.
    "print(result.model.rule.to_expression(tol=1e-3))": (
        "assert printed.strip() == 'x*y - y^2*w', printed"
    ),
    # Choices: the two largest terms are x*r and x^2*r, both positive.
    "print(result.model.rule.top_terms(2))": (
        "top = dict(result.model.rule.top_terms(2))\n"
        "assert set(top) == {'x*r', 'x^2*r'} and min(top.values()) > 0, top"
    ),
    # Spike counts: both terms of Oja's rule, each interval excluding 0 and covering the truth.
    "print(mp.laplace(fitted_counts, counts, count_loss).format(tol=1e-6))": (
        "import re\n"
        "rows = {m[0]: m for m in re.findall(r'^(y\\^2\\*w|x\\*y)\\s+(\\S+)\\s+(\\S+)\\s+"
        "\\[(\\S+), (\\S+)\\]\\s*(\\*?)$', printed, re.M)}\n"
        "assert set(rows) == {'x*y', 'y^2*w'}, printed\n"
        "for term, truth in (('x*y', 1.0), ('y^2*w', -1.0)):\n"
        "    _, estimate, std, low, high, star = rows[term]\n"
        "    assert star == '*' and float(low) < truth < float(high), printed\n"
        "    assert abs(float(estimate) - truth) < 0.02, printed"
    ),
    # Optax: the history holds every step.
    "result.history.params.rule.coefficients  # (steps, 3, 3, 3)": (
        "assert result.history.loss.shape == (100,)\n"
        "assert result.history.params.rule.coefficients.shape == (100, 3, 3, 3)\n"
        "assert result.history.loss[-1] < result.history.loss[0]"
    ),
    # The recovery experiment: the Taylor students recover the rule (R² of weights).
    "print(recovery.median())": (
        "m = recovery.median()\n"
        "assert {'r2_weights', 'r2_activity', 'percent_deviance'} <= set(m), m\n"
        "assert m['r2_weights'] > 0.5, m"
    ),
    # A run folder with its files.
    'run.finish({"loss": float(result.history.loss[-1])})': (
        "import pathlib\n"
        "(folder,) = pathlib.Path('out').glob('oja-*')\n"
        "names = {p.name for p in folder.iterdir()}\n"
        "assert {'metrics.csv', 'summary.json', 'coefficients.png', 'checkpoint'} <= names, names"
    ),
}


def with_checks(blocks, checks):
    """`blocks` as (line, code, check) triples; every check's key must be in exactly one
    block (a check never silently detaches from a README that changed)."""
    out = [[line, code, None] for line, code in blocks]
    for key, check in checks.items():
        hits = [b for b in out if key in b[1]]
        assert len(hits) == 1, f"{len(hits)} README blocks contain {key!r}"
        hits[0][2] = check
    return out


def python_blocks(text):
    """The fenced ```python blocks of a Markdown text, in order, as (first line of code,
    code) pairs; line numbers count from 1."""
    blocks = []
    for match in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S):
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((line, match.group(1)))
    return blocks


def test_a_block_that_does_not_print_what_it_says_fails():
    """The session runs each block's check on what it printed, and stops at the first block
    whose check fails."""
    blocks = [
        [1, "print('x*y')\n", "assert printed.strip() == 'x*y'"],
        [2, "print(2)\n", "assert 0"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps(blocks), capture_output=True, text=True
    )
    assert proc.returncode == 1 and "@@failed-block 1" in proc.stderr
    assert proc.stdout.splitlines() == ["x*y", "2"]  # what the blocks print is still shown


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (10, "y = x\n")]


@pytest.mark.long
def test_readme_python_blocks_run_in_one_session(tmp_path):
    with open(README, encoding="utf-8") as f:
        blocks = python_blocks(f.read())
    assert blocks, "README.md has no ```python blocks"
    blocks = with_checks(blocks, CHECKS)
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
