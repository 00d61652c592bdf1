"""Types reach the user: the package is marked typed, its public signatures are visible to a
static type checker (mypy), and every public module says what it exports."""

import importlib
import os
import re
import subprocess
import sys

import pytest

import metaplastic as mp


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_SCRIPT = """\
import jax.random as jr

import metaplastic as mp

teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0, activation="sigmoid")
x = mp.tasks.gaussian_stimuli(4, 6, n_trajectories=2, std=0.1, key=jr.key(0))
w0 = 0.01 * jr.normal(jr.key(1), (2, 5, 4))
data, _ = mp.generate_activity(teacher, x, w0, key=jr.key(2))
student = mp.nn.PlasticDense(mp.TaylorRule.random(("x", "y", "w"), key=jr.key(3)), eta=1.0)
good = mp.fit(student, data, mp.losses.ActivityMSE(), steps=20)
bad = mp.fit(student, data, mp.losses.ActivityMSE(), steps="20")  # line 11: a str
posterior = mp.laplace(good.model, data, mp.losses.ActivityMSE())
reveal_type(posterior.std)
"""

PUBLIC = [
    "metaplastic",
    "metaplastic.behaviour",
    "metaplastic.data",
    "metaplastic.flies",
    "metaplastic.losses",
    "metaplastic.metrics",
    "metaplastic.nn",
    "metaplastic.plot",
    "metaplastic.rules",
    "metaplastic.runs",
    "metaplastic.sharding",
    "metaplastic.tasks",
]


def pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        return f.read()


@pytest.mark.long
def test_mypy_sees_the_signatures_in_a_user_script_and_the_examples(tmp_path):
    pytest.importorskip("mypy")
    script = tmp_path / "user_script.py"
    script.write_text(USER_SCRIPT)
    # As for an installed package: the library's own modules are followed for their types,
    # their internal errors are not the user's (follow_imports=silent); optax ships no types.
    env = dict(os.environ, MYPYPATH=ROOT)
    command = [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")]
    command += ["--follow-imports=silent", "--ignore-missing-imports", "--no-error-summary"]
    command += [os.path.join(ROOT, "examples"), str(script)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert errors[0].startswith(f'{script}:11: error: Argument "steps" to "fit"')
    assert 'expected "int | None"' in errors[0]
    revealed = [line for line in lines if "Revealed type" in line]
    assert len(revealed) == 1 and "conditional: bool" in revealed[0], proc.stdout


def test_the_package_is_marked_typed_and_ships_the_marker():
    assert os.path.isfile(os.path.join(ROOT, "metaplastic", "py.typed"))
    text = pyproject()
    table = text[text.index("[tool.setuptools.package-data]") :].split("\n[", 1)[0]
    assert re.search(r'^metaplastic = \[.*"py.typed".*\]', table, re.M), table


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_module_declares_what_it_exports(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)) and exported
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names {item!r}, which it lacks"
    # Helpers a module imports for its own use are not part of its interface.
    leaked = {"Callable", "Float", "Array", "PyTree", "Any", "np", "jnp", "jax", "eqx"}
    assert not leaked & set(exported), leaked & set(exported)


def test_the_version_is_written_once():
    project = pyproject().split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project, re.M)
    assert re.search(r'^dynamic = \["version"\]', project, re.M)
    with open(os.path.join(ROOT, "CITATION.cff"), encoding="utf-8") as f:
        cited = re.search(r'^version: "([^"]+)"', f.read(), re.M)
    assert cited is not None and cited.group(1) == mp.__version__
