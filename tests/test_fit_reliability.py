import ast
import logging
import pathlib

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT

import metaplastic as mp


DATA = {"z": jnp.zeros((2, 1))}
SPEC = {"theta": True}


def scalar_fit(loss, theta, lr, **kw):
    return mp.fit(
        {"theta": jnp.asarray(theta)},
        DATA,
        lambda m, b: loss(m["theta"]) + 0.0 * jnp.sum(b["z"]),
        solver=mp.Optax(optax.sgd(lr)),
        filter_spec=SPEC,
        steps=kw.pop("steps", 10),
        progress=kw.pop("progress", False),
        **kw,
    )


def test_nan_loss_stops_with_step_and_last_finite_parameters(tmp_path):
    # sqrt(θ₀) with θ₀ = 1 and steps of 1/(2·sqrt(θ₀)): θ₀ turns negative after two steps.
    with pytest.raises(mp.FitDivergedError, match=r"step 2: the loss became nan") as info:
        scalar_fit(lambda t: jnp.sqrt(t[0]), [1.0, 2.0], 1.0, checkpoint_dir=tmp_path)
    err = info.value
    assert isinstance(err, mp.MetaplasticError)
    assert (err.step, err.quantity, err.member) == (2, "loss", None)
    last = np.asarray(err.last_finite_model["theta"])
    assert np.all(np.isfinite(last)) and last[0] == pytest.approx(1 - 0.5 - 0.5 / np.sqrt(0.5))
    np.testing.assert_allclose(err.result.history.loss, [1.0, np.sqrt(0.5)], rtol=1e-6)
    assert err.result.history.params["theta"].shape == (2, 2)
    # The same last finite state is on disk.
    on_disk, header = mp.load_checkpoint(tmp_path, {"theta": jnp.zeros(2)}, filter_spec=SPEC)
    assert header["status"] == "diverged" and header["step"] == 2
    assert header["diverged"]["quantity"] == "loss"
    np.testing.assert_array_equal(on_disk.model["theta"], last)
    assert err.checkpoint == str(tmp_path / "fit.ckpt")


def test_infinite_parameter_is_named_with_its_index():
    # A finite loss θ₁ with a huge step: θ₁ overflows to -inf in step 1 while the loss is finite.
    with pytest.raises(mp.FitDivergedError) as info:
        scalar_fit(lambda t: t[1], [1.0, 2.0], 3e38)
    err = info.value
    assert err.step == 1 and err.quantity == "parameter ['theta']"
    assert "['theta'][1] = -inf" in str(err)
    assert np.asarray(err.last_finite_model["theta"])[1] == pytest.approx(2.0 - 3e38)


def test_ensemble_divergence_names_the_member():
    thetas = jnp.array([[1.0], [0.2]])
    with pytest.raises(mp.FitDivergedError, match="ensemble member 1") as info:
        mp.fit(
            {"theta": thetas},
            DATA,
            lambda m, b: jnp.sqrt(m["theta"][0]) + 0.0 * jnp.sum(b["z"]),
            solver=mp.Optax(optax.sgd(1.0)),
            filter_spec=SPEC,
            steps=5,
            progress=False,
            ensemble=True,
            data_ensemble_axis=None,
        )
    assert info.value.member == 1 and info.value.step == 1
    assert info.value.result.history.loss.shape == (1, 2)


def test_gradient_clipping_through_optax_keeps_the_fit_finite():
    clipped = optax.chain(optax.clip_by_global_norm(0.1), optax.sgd(1.0))
    result = mp.fit(
        {"theta": jnp.asarray([1.0, 2.0])},
        DATA,
        lambda m, b: jnp.sqrt(m["theta"][0]) + 0.0 * jnp.sum(b["z"]),
        solver=mp.Optax(clipped),
        filter_spec=SPEC,
        steps=5,
        progress=False,
    )
    assert np.all(np.isfinite(result.history.loss))
    assert float(result.model["theta"][0]) == pytest.approx(0.5, abs=1e-6)


class SqrtResiduals(mp.losses.AbstractGaussNewtonLoss):
    """Squared residuals sqrt(θ) against zero targets: NaN for a negative θ."""

    def observe(self, model, batch):
        residuals = jnp.sqrt(model["theta"]) + 0.0 * batch["z"][:, 0]
        ones = jnp.ones(residuals.shape, bool)
        return (
            mp.losses.Observations(residuals, jnp.zeros_like(residuals), ones, "squared_error"),
        )


def test_levenberg_marquardt_divergence_keeps_last_finite_model():
    model = {"theta": jnp.asarray([-1.0])}
    with pytest.raises(mp.FitDivergedError, match="step 0") as info:
        mp.fit(
            model,
            DATA,
            SqrtResiduals(),
            solver=mp.LevenbergMarquardt(),
            filter_spec=SPEC,
            progress=False,
        )
    assert info.value.step == 0
    np.testing.assert_array_equal(info.value.last_finite_model["theta"], [-1.0])


def test_data_that_does_not_fit_the_model_is_refused_before_tracing():
    class TwoLayers(eqx.Module):
        fixed: mp.nn.FixedDense
        plastic: mp.nn.PlasticDense

    def loss(model, data):
        hidden = jnp.einsum("hi,bti->bth", model.fixed.weight, data.inputs)
        return mp.losses.masked_mean(hidden.sum(-1, keepdims=True) ** 2, data.step_mask[..., None])

    model = TwoLayers(mp.nn.FixedDense(jnp.ones((4, 5))), mp.nn.PlasticDense(mp.TaylorRule.zeros()))
    rng = np.random.default_rng(0)
    data = mp.data.ActivityDataset(
        rng.normal(size=(2, 3, 6)), rng.normal(size=(2, 3, 4)), np.zeros((2, 4, 6))
    )
    with pytest.raises(mp.MetaplasticError, match="do the data's shapes") as info:
        mp.fit(model, data, loss, steps=1, progress=False)
    # The message carries the underlying shape error, which stays chained as the cause.
    assert str(info.value.__cause__).strip().splitlines()[0] in str(info.value)
    with pytest.raises(mp.MetaplasticError, match="scalar"):
        mp.fit(model, data, lambda m, d: d.activity, steps=1, progress=False)


# The options are built inside the test: an invalid penalty or solver raises as it is made.
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (lambda: dict(steps=0), "steps"),
        (lambda: dict(steps=2.0), "steps"),
        (lambda: dict(batch_size=0), "batch_size"),
        (lambda: dict(penalty=mp.losses.L1(-1.0)), "L1 weight"),
        (lambda: dict(penalty=mp.losses.L1(1.0, smoothing=-1.0)), "L1 smoothing"),
        (lambda: dict(penalty=mp.losses.L2(float("nan"))), "L2 weight"),
        (lambda: dict(penalty="l2"), "penalty"),
        (lambda: dict(key=3), "PRNG key"),
        (lambda: dict(checkpoint_every=0), "checkpoint_every"),
        (lambda: dict(solver=mp.Optax("adam")), "optax"),
        (lambda: dict(solver="adam"), "solver"),
        (lambda: dict(solver=mp.LevenbergMarquardt()), "Gauss-Newton structure"),
        (lambda: dict(solver=mp.LevenbergMarquardt(damping=0.0)), "damping"),
        (lambda: dict(solver=mp.LevenbergMarquardt(chunks=3), loss=SqrtResiduals()), "chunks"),
        (lambda: dict(differentiation="forward"), "differentiation"),
        (lambda: dict(loss=None), "loss"),
        (lambda: dict(filter_spec={"theta": False}), "selects no trainable"),
        (lambda: dict(ensemble=True), "member axis"),
    ],
)
def test_bad_fit_options(kwargs, match):
    args = dict(
        loss=lambda m, b: jnp.sum(m["theta"]) + 0.0 * jnp.sum(b["z"]),
        filter_spec=SPEC,
        progress=False,
    )
    with pytest.raises(mp.MetaplasticError, match=match):
        args.update(kwargs())
        mp.fit({"theta": jnp.asarray(1.0)}, DATA, **args)


def test_progress_bar_and_logging(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="metaplastic"):
        scalar_fit(lambda t: jnp.sum(t**2), [1.0, 2.0], 0.1, steps=3, progress=True)
    out, err = capsys.readouterr()
    assert out == ""  # the library prints nothing
    assert "fit" in err and "loss=" in err and ("step/s" in err or "s/step" in err)
    messages = [r.getMessage() for r in caplog.records if r.name == "metaplastic"]
    assert any("2 trainable values" in m for m in messages)
    assert any("3 steps in" in m for m in messages)
    scalar_fit(lambda t: jnp.sum(t**2), [1.0, 2.0], 0.1, steps=2, progress=False)
    assert capsys.readouterr() == ("", "")


def test_library_has_no_print_calls():
    offenders = []
    for path in pathlib.Path(ROOT, "metaplastic").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_steps_per_call_gives_the_fit_of_one_step_per_call(tmp_path):
    """Several solver steps per compiled call: the same history, minibatches, callback stop,
    checkpoints (one falls inside a call) and resumption as one step per call, bit for bit."""
    models = {"theta": jnp.array([1.0, -0.5, 0.25])}
    data = {"z": jnp.arange(24.0).reshape(8, 3) / 10}

    def fit(**kw):
        return mp.fit(
            models,
            data,
            lambda m, b: jnp.sum((m["theta"] - jnp.mean(b["z"], 0)) ** 2),
            solver=mp.Optax(optax.adam(0.1)),
            filter_spec=SPEC,
            steps=10,
            batch_size=3,
            progress=False,
            **kw,
        )

    one = fit(steps_per_call=1)
    four = fit(steps_per_call=4)  # calls of 4, 4 and 2 steps
    assert four.n_traces == 1  # the shorter last call runs the same program
    assert four.history.loss.tobytes() == one.history.loss.tobytes()
    assert four.history.params["theta"].tobytes() == one.history.params["theta"].tobytes()
    assert np.asarray(four.model["theta"]).tobytes() == np.asarray(one.model["theta"]).tobytes()
    assert len(set(one.history.loss.tolist())) == 10  # minibatches differ between steps
    # By default the steps of a call adapt to its duration; whatever they are, the result is
    # the same: one step per call of the loop program, or all remaining steps in one call.
    from metaplastic import _fit

    for seconds in (0.0, 1e9):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_fit, "CALL_SECONDS", seconds)
            adaptive = fit()
        assert adaptive.history.loss.tobytes() == four.history.loss.tobytes()
        assert adaptive.history.params["theta"].tobytes() == four.history.params["theta"].tobytes()

    seen = []
    stopped = fit(
        steps_per_call=4,
        checkpoint_dir=tmp_path,
        checkpoint_every=3,
        callback=lambda i, loss, m: seen.append((i, float(m["theta"][0]))) or i == 5,
    )
    assert [i for i, _ in seen] == list(range(6))  # step 5 is inside the second call
    np.testing.assert_array_equal(
        [t for _, t in seen], np.asarray(one.history.params["theta"][:6, 0])
    )
    assert stopped.history.loss.shape == (6,)
    np.testing.assert_array_equal(stopped.model["theta"], one.history.params["theta"][5])
    header = mp.load_checkpoint(tmp_path, models, filter_spec=SPEC)[1]
    assert (header["status"], header["step"]) == ("stopped", 6)
    resumed = fit(steps_per_call=4, checkpoint_dir=tmp_path, checkpoint_every=3, resume=True)
    assert resumed.history.loss.tobytes() == one.history.loss.tobytes()
    assert np.asarray(resumed.model["theta"]).tobytes() == np.asarray(one.model["theta"]).tobytes()


def test_divergence_inside_a_call_names_its_step_and_keeps_the_last_finite_state(tmp_path):
    # sqrt(θ₀) turns NaN in step 2, the third step of the first call of 4 steps.
    with pytest.raises(mp.FitDivergedError, match=r"step 2: the loss became nan") as info:
        scalar_fit(
            lambda t: jnp.sqrt(t[0]), [1.0, 2.0], 1.0, steps_per_call=4, checkpoint_dir=tmp_path
        )
    err = info.value
    last = np.asarray(err.last_finite_model["theta"])
    assert last[0] == pytest.approx(1 - 0.5 - 0.5 / np.sqrt(0.5))
    assert err.result.history.loss.shape == (2,)
    on_disk, header = mp.load_checkpoint(tmp_path, {"theta": jnp.zeros(2)}, filter_spec=SPEC)
    assert (header["status"], header["step"]) == ("diverged", 2)
    np.testing.assert_array_equal(on_disk.model["theta"], last)
    with pytest.raises(mp.MetaplasticError, match="steps_per_call must be a positive integer"):
        scalar_fit(lambda t: t[0], [1.0, 2.0], 1.0, steps_per_call=0)
