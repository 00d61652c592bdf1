"""Results as pandas DataFrames: a fit's history, a posterior's table, a model comparison
(the selections' tables are checked in test_sparse.py)."""

import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metaplastic as mp
from metaplastic._compare import Comparison
from metaplastic._laplace import Posterior


def quadratic_fit(theta, **kw):
    data = {"z": jnp.arange(12.0).reshape(4, 3) / 10}
    return mp.fit(
        {"theta": jnp.asarray(theta)},
        data,
        lambda m, b: jnp.sum((m["theta"] - jnp.mean(b["z"], 0)) ** 2, axis=-1),
        solver=mp.Optax(optax.adam(0.1)),
        filter_spec={"theta": True},
        steps=3,
        progress=False,
        **kw,
    )


def test_history_has_one_row_per_step_and_one_column_per_value():
    history = quadratic_fit([1.0, -0.5, 0.25]).history
    frame = history.to_dataframe()
    names = ["['theta'][0]", "['theta'][1]", "['theta'][2]"]
    assert list(frame.columns) == ["step", "loss", *names]
    assert frame["step"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(frame["loss"], history.loss)
    np.testing.assert_array_equal(frame[names].to_numpy(), history.params["theta"])


def test_history_of_an_ensemble_has_a_row_per_step_and_member():
    history = quadratic_fit(
        [[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]], ensemble=True, data_ensemble_axis=None
    ).history
    frame = history.to_dataframe()
    assert list(frame.columns[:3]) == ["step", "member", "loss"]
    assert len(frame) == 6
    for m in range(2):
        rows = frame[frame["member"] == m]
        np.testing.assert_array_equal(rows["loss"], history.loss[:, m])
        np.testing.assert_array_equal(rows["['theta'][1]"], history.params["theta"][:, m, 1])


def _posterior(mean, var):
    var = np.asarray(var, float)
    cov = np.eye(var.shape[-1]) * var[..., None, :]
    return Posterior(
        {"theta": jnp.asarray(mean, float)},
        jnp.asarray(cov),
        jnp.asarray(np.where(cov > 0, 1 / np.where(cov > 0, cov, 1), 0)),
        None,
        jnp.full(var.shape[:-1], 2),  # the rank, per member for an ensemble
        ("x*r", "w", "1"),
        (True, True, False),
    )


def test_posterior_frame_is_its_table_and_an_ensemble_gets_a_member_column():
    one = _posterior([0.5, -0.01, 0.0], [0.01, 1e-4, 0.0])
    frame = one.to_dataframe(level=0.9)
    assert frame.to_dict("records") == one.table(0.9)
    assert frame["excludes_zero"].tolist() == [True, False, False]  # 0.5 ± 0.16; -0.01 ± 0.016
    assert frame["fixed"].tolist() == [False, False, True]
    both = _posterior([[0.5, -0.01, 0.0], [-0.2, 0.3, 0.0]], [[0.01, 1e-4, 0.0], [1.0, 1e-2, 0]])
    frame = both.to_dataframe()
    assert list(frame.columns) == [
        "member",
        "term",
        "estimate",
        "std",
        "low",
        "high",
        "excludes_zero",
        "fixed",
        "determined",
    ]
    for i in range(2):
        rows = frame[frame["member"] == i].drop(columns="member").to_dict("records")
        assert rows == both.member(i).table()


def test_comparison_frame_is_its_table_per_member():
    scores = lambda *v: jnp.asarray(v, float)
    single = Comparison(
        names=("a", "b"),
        log_likelihood=scores(-10.0, -8.0),
        held_out_log_likelihood=None,
        aic=scores(22.0, 20.0),
        bic=scores(23.0, 22.0),
        log_evidence=scores(-12.0, -11.5),
        n_obs=jnp.asarray(40),
        n_params=(1, 2),
        prior_std=1.0,
        models={},
    )
    assert single.to_dataframe().to_dict("records") == single.table()
    ensemble = Comparison(
        names=("a", "b"),
        log_likelihood=scores([-10.0, -8.0], [-5.0, -9.0]),
        held_out_log_likelihood=scores([-3.0, -2.0], [-1.0, -4.0]),
        aic=scores([22.0, 20.0], [12.0, 22.0]),
        bic=scores([23.0, 22.0], [13.0, 24.0]),
        log_evidence=scores([-12.0, -11.5], [-6.0, -11.0]),
        n_obs=jnp.asarray([40, 40]),
        n_params=(1, 2),
        prior_std=1.0,
        models={},
    )
    frame = ensemble.to_dataframe()
    assert list(frame.columns[:2]) == ["member", "model"] and len(frame) == 4
    second = frame[frame["member"] == 1].set_index("model")
    assert second.loc["a", "held_out"] == -1.0 and second.loc["b", "aic"] == 22.0
    assert list(ensemble.best("aic")) == [1, 0]


def test_without_pandas_the_error_says_how_to_install_it(monkeypatch):
    history = quadratic_fit([1.0, 0.0, 0.0]).history
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(mp.MissingDependencyError, match=r'pip install "metaplastic\[pandas\]"'):
        history.to_dataframe()
