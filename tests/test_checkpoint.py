import json
import os
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _resume_problem import STEPS, STOP, problem, run
from conftest import ROOT

import metaplastic as mp
from metaplastic._checkpoint import MAGIC


def assert_bitwise_equal(a, b):
    la, lb = (
        jax.tree.leaves(eqx.filter(a, eqx.is_array)),
        jax.tree.leaves(eqx.filter(b, eqx.is_array)),
    )
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted fit, without checkpoints."""
    return run()


def test_sigkilled_fit_resumes_bitwise_identical(tmp_path, reference):
    folder, marker = tmp_path / "ckpt", tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    child = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "_resume_problem.py"),
            str(folder),
            str(marker),
        ],
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the fitting process ended early: {child.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("the fitting process did not reach the stop step in time")
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    # Killed in step STOP: the last checkpoint (every 2 steps) holds STOP steps.
    result, header = mp.load_checkpoint(folder, problem()[0])
    assert header["step"] == STOP and header["status"] == "running"
    assert result.history.loss.shape == (STOP,)
    np.testing.assert_array_equal(result.history.loss, reference.history.loss[:STOP])

    steps_run = []
    resumed = run(folder, resume=True, callback=lambda i, *_: steps_run.append(i))
    assert steps_run == list(range(STOP, STEPS))  # it continued, it did not start again
    assert resumed.n_traces <= 1  # 0: the first run compiled the same program
    assert_bitwise_equal(resumed.model, reference.model)
    assert resumed.history.loss.tobytes() == reference.history.loss.tobytes()
    assert_bitwise_equal(resumed.history.params, reference.history.params)
    assert mp.load_checkpoint(folder, problem()[0])[1]["status"] == "finished"
    # A finished fit resumes to the same result without fitting again.
    again = run(folder, resume=True)
    assert again.n_traces == 0
    assert_bitwise_equal(again.model, reference.model)


def test_checkpoint_frequency_and_same_key_do_not_change_the_result(tmp_path, reference):
    # Reproducibility: the same key gives bitwise the same fit on CPU, whether or not (and
    # however often) it checkpoints; another key gives another batch order.
    same = run(tmp_path / "a", checkpoint_every=1)
    assert_bitwise_equal(same.model, reference.model)
    assert same.history.loss.tobytes() == reference.history.loss.tobytes()
    other = run(key_seed=2)
    assert not np.array_equal(other.history.loss, reference.history.loss)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    run(folder, steps=2)
    return folder / "fit.ckpt"


def _copy(saved, tmp_path, change=None):
    folder = tmp_path / "copy"
    folder.mkdir()
    blob = saved.read_bytes()
    if change is not None:
        blob = change(blob)
    (folder / "fit.ckpt").write_bytes(blob)
    return folder


def _edit_header(blob, edit):
    rest = blob[len(MAGIC) :]
    nl = rest.index(b"\n")
    n = int(rest[:nl])
    header = json.loads(rest[nl + 1 : nl + 1 + n])
    edit(header)
    head = json.dumps(header, sort_keys=True).encode()
    return MAGIC + f"{len(head)}\n".encode() + head + rest[nl + 1 + n :]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda b: b[: len(b) - 7], "truncated"),
        (lambda b: b[: len(b) // 3], "truncated"),
        (lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:], "checksum"),
        (lambda b: b"PK\x03\x04" + b[4:], "not a metaplastic checkpoint"),
        (lambda b: b"", "not a metaplastic checkpoint"),
        (lambda b: b[: len(MAGIC)] + b"12x\n" + b[len(MAGIC) :], "header length"),
        (lambda b: _edit_header(b, lambda h: h.update(format_version=99)), "format version 99"),
        (lambda b: _edit_header(b, lambda h: h["leaves"][0][1].append(7)), "does not fit"),
        (lambda b: _edit_header(b, lambda h: h.update(step=5)), "does not fit"),
    ],
)
def test_damaged_checkpoint_is_refused_untouched(saved, tmp_path, change, match):
    folder = _copy(saved, tmp_path, change)
    before = (folder / "fit.ckpt").read_bytes()
    calls = []
    with pytest.raises(mp.CheckpointError, match=match):
        run(folder, resume=True, callback=lambda *a: calls.append(a))
    assert calls == []
    assert (folder / "fit.ckpt").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["fit.ckpt"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer=optax.sgd(0.1)), "does not fit this model or optimizer"),
        (dict(model=mp.nn.PlasticDense(mp.TaylorRule.zeros(order=2))), "model's structure"),
        (
            dict(model=mp.nn.PlasticDense(mp.TaylorRule.zeros(order=1), eta=0.5)),
            "model's structure",
        ),
        (dict(model=mp.nn.PlasticDense(mp.TaylorRule(jnp.ones((2, 2, 2))))), "initial model"),
        (dict(data_seed=3), "the data"),
        (dict(key_seed=5), "PRNG key"),
        (dict(penalty=mp.losses.L2(0.1)), "penalty"),
        (dict(steps=1), "already holds 2 steps"),
    ],
)
def test_incompatible_checkpoint_is_refused(saved, tmp_path, kwargs, match):
    folder = _copy(saved, tmp_path)
    with pytest.raises(mp.CheckpointError, match=match):
        run(folder, resume=True, **kwargs)


def test_existing_checkpoint_is_never_overwritten_and_temporaries_are_ignored(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    with pytest.raises(mp.MetaplasticError, match="resume=True"):
        run(folder)
    # What an interrupted write leaves behind is not a checkpoint and is cleared away.
    (folder / ".fit.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    result = run(folder, steps=3, resume=True)
    assert result.history.loss.shape == (3,)
    assert sorted(p.name for p in folder.iterdir()) == ["fit.ckpt"]
    with pytest.raises(mp.MetaplasticError, match="checkpoint_dir"):
        run(None, resume=True)


def test_fresh_start_when_resuming_without_checkpoint(tmp_path):
    result = run(tmp_path / "new", steps=2, resume=True)
    assert result.history.loss.shape == (2,)
    assert (tmp_path / "new" / "fit.ckpt").exists()


def test_ensemble_stopped_or_interrupted_fits_resume_exactly(tmp_path):
    models = {"theta": jnp.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]])}
    data = {"z": jnp.arange(12.0).reshape(6, 2)}

    def fit(**kw):
        return mp.fit(
            models,
            data,
            lambda m, b: jnp.sum((m["theta"] - jnp.mean(b["z"], 0) / 10) ** 2),
            filter_spec={"theta": True},
            steps=6,
            batch_size=4,
            ensemble=True,
            data_ensemble_axis=None,
            progress=False,
            key=jax.random.key(3),
            **{"solver": mp.Optax(optax.adam(0.1)), **kw},
        )

    reference = fit()
    assert reference.history.loss.shape == (6, 3)
    stopped = fit(checkpoint_dir=tmp_path / "a", callback=lambda i, *_: i == 2)
    assert stopped.history.loss.shape == (3, 3)
    status = mp.load_checkpoint(tmp_path / "a", models, filter_spec={"theta": True})[1]["status"]
    assert status == "stopped"
    resumed = fit(checkpoint_dir=tmp_path / "a", resume=True)
    assert_bitwise_equal(resumed.model, reference.model)
    assert resumed.history.loss.tobytes() == reference.history.loss.tobytes()

    # Interrupted (Ctrl-C), with an optimizer state that holds typed PRNG keys (gradient noise).
    noisy = optax.chain(optax.add_noise(0.01, 0.55, jax.random.key(1)), optax.adam(0.1))
    noisy_reference = fit(solver=mp.Optax(noisy))
    assert not np.array_equal(noisy_reference.model["theta"], reference.model["theta"])

    def interrupt(step, *_):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(solver=mp.Optax(noisy), checkpoint_dir=tmp_path / "b", callback=interrupt)
    saved, header = mp.load_checkpoint(tmp_path / "b", models, filter_spec={"theta": True})
    assert header["status"] == "interrupted" and saved.history.loss.shape == (4, 3)
    resumed = fit(solver=mp.Optax(noisy), checkpoint_dir=tmp_path / "b", resume=True)
    assert_bitwise_equal(resumed.model, noisy_reference.model)
    assert resumed.history.loss.tobytes() == noisy_reference.history.loss.tobytes()


@pytest.mark.slow
def test_fit_killed_at_random_moments_always_resumes_exactly(tmp_path, reference):
    """Kill a fit that checkpoints every step at random moments, again and again (a kill
    may land in the middle of a write): every resume continues exactly."""
    folder = tmp_path / "ckpt"
    code = (
        "import sys; from _resume_problem import run; "
        "run(sys.argv[1], checkpoint_every=1, resume=True, steps=12)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    rng = np.random.default_rng(0)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=env)
        while not (folder / "fit.ckpt").exists() and child.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        child.kill()
        child.wait()
    resumed = run(folder, resume=True)
    assert_bitwise_equal(resumed.model, reference.model)
    assert resumed.history.loss.tobytes() == reference.history.loss.tobytes()


@pytest.mark.slow
def test_example_writes_a_run_folder(tmp_path):
    args = ["--out", str(tmp_path), "--steps", "4", "--trajectories", "2", "--length", "6"]
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "resumable_fit.py"),
            *args,
            "--no-progress",
        ],
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    folder = os.path.join(summary["run"])
    assert sorted(os.listdir(folder)) == [
        "checkpoint",
        "coefficients.png",
        "config.json",
        "metrics.csv",
        "summary.json",
        "weights.png",
    ]
    assert summary["steps"] == 4


def test_levenberg_marquardt_stopped_fit_resumes_exactly(tmp_path):
    layer, data = problem()

    def fit(**kw):
        return mp.fit(
            layer,
            data,
            mp.losses.ActivityMSE(),
            solver=mp.LevenbergMarquardt(chunks=1),
            steps=5,
            batch_size=3,
            key=jax.random.key(4),
            progress=False,
            **kw,
        )

    reference = fit()
    fit(checkpoint_dir=tmp_path, callback=lambda it, *_: it == 1)
    assert mp.load_checkpoint(tmp_path, layer)[1]["status"] == "stopped"
    with pytest.raises(mp.CheckpointError, match="the solver"):
        run(tmp_path, resume=True, steps=5)  # a gradient fit cannot continue it
    steps_run = []
    resumed = fit(checkpoint_dir=tmp_path, resume=True, callback=lambda i, *_: steps_run.append(i))
    assert steps_run == [2, 3, 4] and resumed.n_traces <= 1
    assert_bitwise_equal(resumed.model, reference.model)
    assert resumed.history.loss.tobytes() == reference.history.loss.tobytes()
    assert_bitwise_equal(resumed.history.params, reference.history.params)
