"""Rules with memory (eligibility traces, BCM) and delayed reward: their semantics, their
state through the one scan, derivatives, printing, inference, and the errors on bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import finite_difference_grad

import metaplastic as mp


bh = mp.behaviour


def _trace(expr="trace(λ=0.7): x*y", factors=("x", "y", "w")):
    return mp.rules.TraceRule.from_expression(expr, factors)


# ------------------------------------------------------------------------- semantics
def test_trace_rule_accumulates_and_is_gated_by_the_reward():
    rule = _trace("trace(λ=0.5): x*y")
    x, y, w = jnp.asarray([2.0]), jnp.asarray([3.0]), jnp.asarray([[5.0]])
    e = rule.init_state(w)
    change, e = rule.step(e, x, y, w, 0.0)  # no reward: the trace fills, the weight stays
    assert float(change[0, 0]) == 0.0 and float(e[0, 0]) == 6.0
    change, e = rule.step(e, x, y, w, 7.0)  # e = 0.5·6 + 6 = 9, change = 7·9
    assert float(e[0, 0]) == pytest.approx(9.0) and float(change[0, 0]) == pytest.approx(63.0)
    assert rule.factors == ("x", "y", "w", "r")


def test_bcm_uses_the_threshold_before_the_step_and_slides_it():
    rule = mp.rules.BCMRule(2.0, 5.0)
    x, y, w = jnp.asarray([3.0]), jnp.asarray([0.5]), jnp.zeros((1, 1))
    change, m = rule.step(jnp.asarray([0.25]), x, y, w, 0.0)
    # θ₁ x y (y − y_M) = 2·3·0.5·0.25, y_M + (y² − y_M)/τ = 0.25 + 0
    assert float(change[0, 0]) == pytest.approx(0.75) and float(m[0]) == pytest.approx(0.25)
    _, m = rule.step(jnp.asarray([0.0]), x, y, w, 0.0)
    assert float(m[0]) == pytest.approx(0.25 / 5.0)
    assert float(rule.tau) == pytest.approx(5.0)


def test_a_layer_with_a_memoryless_rule_keeps_its_weights_as_its_state():
    layer = mp.nn.PlasticDense(mp.rules.oja(), eta=0.5, in_size=3, out_size=2)
    assert isinstance(layer.init_state(key=jr.key(0)), jax.Array)
    stateful = mp.nn.PlasticDense(_trace(), eta=0.5, in_size=3, out_size=2)
    state = stateful.init_state(key=jr.key(0))
    assert isinstance(state, mp.nn.PlasticState) and state.rule_state.shape == (2, 3)


def test_the_trace_rides_through_the_one_scan_of_any_layer():
    """A trace rule with λ → 0 is the memoryless rule g·r, in a dense and in a recurrent
    layer (whose state carries the trace)."""
    x = jr.normal(jr.key(0), (8, 3))
    r = jr.normal(jr.key(1), (8,))
    w0 = 0.3 * jr.normal(jr.key(2), (2, 3))
    memoryless = mp.rules.from_expression("x*y*r")
    tiny = _trace("trace(λ=1e-9): x*y")
    a = mp.simulate(mp.nn.PlasticDense(memoryless, eta=0.3), w0, x, r, return_weights=True)
    b = mp.simulate(mp.nn.PlasticDense(tiny, eta=0.3), w0, x, r, return_weights=True)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-5, atol=1e-6)

    rec = lambda rule: mp.nn.PlasticRecurrent(rule, 3, 4, eta=0.3)
    s0 = rec(memoryless).init_state(key=jr.key(3))
    s0_trace = rec(tiny).init_state(key=jr.key(3))
    assert s0_trace.rule_state.shape == (4, 4) and s0.rule_state == ()
    ya = mp.simulate_network(rec(memoryless), s0, x, r).outputs
    yb = mp.simulate_network(rec(tiny), s0_trace, x, r).outputs
    np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-6)


def test_gradient_of_a_stateful_rule_matches_finite_differences(x64):
    """The loss's gradient with respect to the trace's decay logit and the BCM time constant
    (through every step of the scan) against central differences."""
    x = jr.normal(jr.key(0), (10, 3)) * 0.5
    r = jr.normal(jr.key(1), (10,))
    w0 = 0.3 * jr.normal(jr.key(2), (2, 3))
    target = jr.normal(jr.key(3), (10, 2))

    def loss_of(rule):
        out = mp.simulate(mp.nn.PlasticDense(rule, eta=0.5), w0, x, r).activity
        return jnp.sum((out - target) ** 2)

    trace = _trace("trace(λ=0.6): x*y - 0.5*w")
    bcm = mp.rules.BCMRule(0.8, 3.0)
    for rule, where in ((trace, lambda m: m.decay_logit), (bcm, lambda m: m.log_tau)):
        f = jax.jit(lambda v, rule=rule, where=where: loss_of(eqx.tree_at(where, rule, v)))
        v0 = where(rule)
        fd = finite_difference_grad(f, v0)
        np.testing.assert_allclose(jax.jit(jax.grad(f))(v0), fd, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------- printing
@pytest.mark.parametrize(
    "text",
    ["trace(λ=0.7): x*y", "trace(λ=0.25): x*y - 0.5*y^2*w", "bcm(τ=12.5): 0.3*x*y*(y - y_M)"],
)
def test_rules_with_memory_print_and_parse_back(text):
    kind = mp.rules.BCMRule if text.startswith("bcm") else mp.rules.TraceRule
    rule = kind.from_expression(text)
    assert rule.to_expression() == text
    assert kind.from_expression(rule.to_expression()).to_expression() == text


# ------------------------------------------------------------------------- delayed reward
def test_replay_reproduces_delayed_generation_exactly():
    """The closed loop with a reward delay and a trace, replayed on its own inputs, gives
    the same weights trial for trial (the delay and the trace are applied alike)."""
    task = bh.OperantTask(((0.2, 0.8),), 12)
    net = bh.MushroomBody(_trace("trace(λ=0.7): x", ("x",)), reward_delay=2, key=jr.key(0))
    gen = bh.generate_behaviour(
        net, task, bh.OdourEncoding(2, key=jr.key(1)), 3, key=jr.key(2), resample_inputs=False
    )
    rep = bh.replay(net, gen.data, gen.initial_weights)
    np.testing.assert_allclose(rep.weights, gen.weights, rtol=1e-5, atol=1e-6)
    # The first two trials learn nothing: their signals are still on their way.
    np.testing.assert_array_equal(gen.weights[:, 1], gen.initial_weights)


@pytest.mark.slow  # a fit and a posterior through the delayed task: ~5 s on 2 cores
def test_fit_recovers_the_decay_and_laplace_reports_it_in_its_range():
    """A small delayed-reward study: the trace's decay is fitted by Levenberg-Marquardt from
    choices, and `natural_intervals` gives an interval on λ itself that holds the estimate."""
    true = _trace("trace(λ=0.7): x", ("x",))
    task = bh.OperantTask(((0.2, 0.8), (0.9, 0.1)), 40)
    data = bh.recovery_data(
        true, seeds=1, n_train=8, n_test=1, task=task, reward_delay=2, draws=None, key=jr.key(4)
    )
    train = jax.tree.map(lambda a: a[0], data.train)
    student = mp.rules.TraceRule(mp.TaylorRule(jnp.asarray([0.0, 0.5]), ("x",)), 0.5)
    fitted = mp.fit(
        data.teacher.with_rule(student), train, bh.ChoiceBCE(), steps=15, progress=False
    ).model
    assert abs(float(fitted.rule.decay) - 0.7) < 0.15
    post = mp.laplace(fitted, train, bh.ChoiceBCE())
    ((name, (estimate, low, high)),) = post.natural_intervals().items()
    assert name.endswith("rule.λ")
    assert 0 < float(low) < float(estimate) < float(high) < 1
    assert float(estimate) == pytest.approx(float(fitted.rule.decay))


# ------------------------------------------------------------------------- bad input
def test_a_decay_outside_zero_one_is_refused():
    inner = mp.rules.hebbian()
    for decay in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(mp.MetaplasticError, match=r"decay λ must lie strictly between 0 and 1"):
            mp.rules.TraceRule(inner, decay)


def test_a_bcm_time_constant_below_one_step_is_refused():
    with pytest.raises(mp.MetaplasticError, match=r"time constant τ must be greater than 1"):
        mp.rules.BCMRule(1.0, 0.5)


def test_a_reward_delay_longer_than_the_trajectory_is_refused():
    task = bh.OperantTask(((0.2, 0.8),), 5)
    net = bh.MushroomBody(_trace("trace(λ=0.7): x", ("x",)), reward_delay=5, key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match=r"reward delay \(5 trials\) is not shorter"):
        bh.generate_behaviour(net, task, bh.OdourEncoding(2), 1, key=jr.key(1))


def test_a_reward_delay_longer_than_an_activity_trajectory_is_refused():
    np.testing.assert_array_equal(
        mp.tasks.delayed_rewards(jnp.asarray([[1.0, 2.0, 3.0]]), 1), [[0.0, 1.0, 2.0]]
    )
    with pytest.raises(mp.MetaplasticError, match=r"reward delay \(3 steps\) is not shorter"):
        mp.tasks.delayed_rewards(jnp.ones((2, 3)), 3)


def test_a_trace_of_an_mlp_rule_prints_and_simulates():
    rule = mp.rules.TraceRule(mp.MLPRule(("x", "y", "w"), key=jr.key(0)), 0.5)
    assert rule.to_expression() == "trace(λ=0.5): mlp"
    x, r = jnp.ones((4, 3)), jnp.ones(4)
    out = mp.simulate(mp.nn.PlasticDense(rule, eta=0.1), jnp.zeros((2, 3)), x, r)
    assert out.final_weights.shape == (2, 3) and np.all(np.isfinite(out.final_weights))


def test_a_trace_rule_without_a_reward_signal_is_refused():
    x = jnp.ones((4, 3))
    with pytest.raises(mp.MetaplasticError, match=r"TraceRule .* reward factor 'r'.*no rewards"):
        mp.simulate_network(mp.nn.PlasticDense(_trace(), eta=0.1), jnp.zeros((2, 3)), x)


def test_a_trace_of_a_rule_with_memory_is_refused():
    with pytest.raises(mp.MetaplasticError, match=r"TraceRule needs a memoryless rule"):
        mp.rules.TraceRule(mp.rules.BCMRule(), 0.5)


@pytest.mark.slow  # three inference verbs on a small activity problem: ~10 s on 2 cores
def test_profile_bootstrap_and_compare_models_work_on_a_trace_rule():
    """A trace fitted to activity with rewards: the profile of its Taylor term refits λ at
    every value, the bootstrap refits both, and compare_models prefers the trace over the
    memoryless rule on data the trace generated."""
    true = _trace("trace(λ=0.6): x*y")
    teacher = mp.nn.PlasticDense(true, eta=0.5, activation="sigmoid")
    x = mp.tasks.gaussian_stimuli(3, 15, n_trajectories=6, std=1.0, key=jr.key(0))
    w0 = 0.3 * jr.normal(jr.key(1), (6, 2, 3))
    r = jr.normal(jr.key(2), (6, 15))
    readout = mp.nn.ActivityReadout(1.0, 0.01)
    data, _ = mp.generate_activity(teacher, x, w0, rewards=r, readout=readout, key=jr.key(3))
    loss = mp.losses.ActivityMSE()
    inner = mp.TaylorRule.from_expression("0.5*x*y")
    student = mp.rules.TraceRule(inner.with_trainable(inner.mask(["x*y", "w"])), 0.4)
    fitted = mp.fit(mp.nn.PlasticDense(student, eta=0.5), data, loss, steps=20, progress=False)
    assert abs(float(fitted.model.rule.decay) - 0.6) < 0.05

    prof = mp.profile(fitted.model, data, loss, "x*y", [0.8, 1.0, 1.2], steps=10)
    objective = np.asarray(prof.objective)
    assert np.all(np.isfinite(objective)) and int(np.argmin(objective)) == 1

    boot = mp.bootstrap(fitted.model, data, loss, n=3, key=jr.key(4), steps=5)
    decays = np.asarray(jax.nn.sigmoid(boot.samples.rule.decay_logit))
    assert decays.shape == (3,) and np.all(np.abs(decays - 0.6) < 0.1)

    memoryless = mp.TaylorRule.from_expression("0.5*x*y*r", ("x", "y", "r"))
    candidates = {
        "immediate": mp.nn.PlasticDense(
            memoryless.with_trainable(memoryless.mask(["x*y*r"])), eta=0.5
        ),
        "trace": mp.nn.PlasticDense(student, eta=0.5),
    }
    comparison = mp.compare_models(candidates, data, loss, steps=20)
    assert comparison.best("bic") == "trace" and comparison.best("evidence") == "trace"


def test_the_fly_families_offer_a_trace_on_request_only():
    rule = mp.flies.family_rule("trace", key=jr.key(0))
    assert isinstance(rule, mp.TraceRule) and rule.factors == ("x", "r")
    assert float(rule.decay) == pytest.approx(0.5)
    assert "trace" in mp.flies.MEMORY_FAMILIES and "trace" not in mp.flies.FAMILIES
