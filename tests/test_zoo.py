"""The model zoo: layers and heads compose into models that one simulation runs and one fit
fits; a new head is one class written here."""

import re
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import metaplastic as mp


OJA = "x*y - y^2*w"


def _layer(rule, n_in=6, n_out=5, **kw):
    return mp.nn.PlasticDense(
        rule, eta=0.1, activation="sigmoid", in_size=n_in, out_size=n_out, **kw
    )


def test_plastic_dense_through_the_generic_scan_is_bitwise_simulate():
    """`simulate` of a PlasticDense and `simulate_network` agree bit for bit (the same
    scan), with padding and checkpointing."""
    layer = _layer(mp.TaylorRule.from_expression(OJA))
    w0 = 0.3 * jr.normal(jr.key(0), (5, 6))
    x = jr.normal(jr.key(1), (12, 6))
    r = jr.normal(jr.key(2), (12,))
    mask = jnp.arange(12) < 9
    for checkpoint in (False, True, 4):
        a = mp.simulate(layer, w0, x, r, mask, return_weights=True, checkpoint=checkpoint)
        b = mp.simulate_network(layer, w0, x, r, mask, return_states=True, checkpoint=checkpoint)
        assert np.array_equal(a.activity, b.outputs)
        assert np.array_equal(a.weights, b.states)
        assert np.array_equal(a.final_weights, b.final_state)
    # padded steps leave the state unchanged
    assert np.array_equal(b.states[8], b.states[-1])


def test_recurrent_step_uses_presynaptic_rates_of_the_previous_step():
    """For a recurrent synapse the rule's x is the presynaptic unit's previous rate: a rule
    `x` (Δw_ij = η y_j(t−1)) adds the previous rates along each row, off the diagonal."""
    rule = mp.TaylorRule.from_expression("x")
    layer = mp.nn.PlasticRecurrent(rule, 2, 3, eta=0.5, activation="identity")
    state = mp.nn.RecurrentState(jnp.ones((3, 2)), jnp.zeros((3, 3)), jnp.asarray([1.0, 2.0, 3.0]))
    post, new = layer.step(state, jnp.asarray([1.0, -1.0]), 0.0)
    np.testing.assert_allclose(post, [0.0, 0.0, 0.0])  # W_in x = 0, W_rec = 0, b = 0
    expected = 0.5 * np.tile([1.0, 2.0, 3.0], (3, 1)) * (1 - np.eye(3))
    np.testing.assert_allclose(new.recurrent_weights, expected)
    np.testing.assert_allclose(new.rates, post)
    np.testing.assert_array_equal(new.input_weights, state.input_weights)


def test_chain_threads_outputs_and_shares_a_rule():
    shared = mp.TaylorRule.from_expression(OJA)
    chain = mp.nn.Chain(_layer(shared, 4, 3), _layer(shared, 3, 2))
    assert (chain.in_size, chain.out_size) == (4, 2)
    state = chain.init_state(key=jr.key(0))
    x = jr.normal(jr.key(1), (4,))
    y, new = chain.step(state, x, 0.0)
    h, s1 = chain.layers[0].step(state[0], x, 0.0)
    y2, s2 = chain.layers[1].step(state[1], h, 0.0)
    assert np.array_equal(y, y2) and np.array_equal(new[0], s1) and np.array_equal(new[1], s2)
    # one shared rule: the default filter spec trains both references of the same module,
    # which stay one set of coefficients after a fit step
    spec = mp.rule_filter_spec(chain)
    assert sum(jax.tree.leaves(spec)) == 2


def test_poisson_and_calcium_heads_predict_as_documented():
    a = jnp.asarray([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    poisson = mp.nn.PoissonHead(2, gain=2.0, offset=-1.0)
    np.testing.assert_allclose(poisson.predict(a), 2.0 * a - 1.0)
    calcium = mp.nn.CalciumHead(2, decay=0.5, scale=3.0, offset=1.0)
    c = np.asarray([[1.0, 0.0], [0.5, 2.0], [0.25, 1.0]])
    np.testing.assert_allclose(calcium.predict(a), 3.0 * c + 1.0, rtol=1e-6)


def test_poisson_likelihood_is_the_exact_negative_log_likelihood(x64):
    from scipy.stats import poisson

    lik = mp.losses.Poisson()
    f = jnp.asarray([-1.0, 0.3, 2.0])
    t = jnp.asarray([0.0, 2.0, 9.0])
    value, slope, curve = lik.per_observation(f, t)
    np.testing.assert_allclose(value, -poisson.logpmf(t, np.exp(f)), rtol=1e-12)
    np.testing.assert_allclose(
        slope, jax.vmap(jax.grad(lambda a, b: lik.per_observation(a, b)[0]))(f, t)
    )
    np.testing.assert_allclose(curve, np.exp(f))


def _recording_problem(head, *, n_in=6, n_out=5, batch=4, length=20, seed=0):
    truth = mp.TaylorRule.from_expression(OJA)
    model = mp.nn.Model(_layer(truth, n_in, n_out), head)
    x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=batch, std=1.0, key=jr.key(seed))
    data, truth_traj = mp.generate_recordings(model, x, key=jr.key(seed + 1), state_scale=0.3)
    student = eqx.tree_at(lambda m: m.network.rule, model, mp.TaylorRule.zeros(("x", "y", "w")))
    return model, student, data


@pytest.mark.parametrize(
    "head",
    [mp.nn.PoissonHead(10, gain=3.0, offset=2.0), mp.nn.CalciumHead(10, decay=0.7)],
    ids=["poisson", "calcium"],
)
def test_every_head_recovers_oja_with_levenberg_marquardt(head, x64):
    model, student, data = _recording_problem(head, n_out=10, batch=10, length=40)
    loss = mp.losses.RecordingLoss()
    result = mp.fit(student, data, loss, steps=15, progress=False)
    fitted = result.model.network.rule
    if isinstance(head, mp.nn.PoissonHead):
        # counts determine the 27-term rule only to their Poisson noise (std 0.15 and 0.30
        # on the two terms here): the truth lies within 3 posterior std of the estimate
        std = mp.laplace(result.model, data, loss).std().network.rule
        for term, true in (("x*y", 1.0), ("y^2*w", -1.0)):
            assert abs(fitted.coefficient(term) - true) < 3 * std.coefficient(term)
            assert std.coefficient(term) < 0.5
    else:  # noiseless fluorescence determines it
        assert abs(fitted.coefficient("x*y") - 1) < 1e-3
        assert abs(fitted.coefficient("y^2*w") + 1) < 1e-3


class ThresholdHead(mp.nn.AbstractHead):
    """A head written in a user's file: events seen with probability `sigmoid(k (a − θ))`
    (a Bernoulli observation of a thresholded activity)."""

    threshold: jax.Array
    n_neurons: int | None = eqx.field(static=True, default=None)
    sharpness: float = eqx.field(static=True, default=20.0)
    likelihood: ClassVar[mp.losses.AbstractLikelihood] = mp.losses.Bernoulli()

    def predict(self, activity):
        return self.sharpness * (activity - self.threshold)

    def sample(self, predictions, *, key):
        return jr.bernoulli(key, jax.nn.sigmoid(predictions)).astype(predictions.dtype)

    def check_recordings(self, recordings, valid):
        if np.any(valid & (recordings != 0) & (recordings != 1)):
            raise mp.MetaplasticError("events must be 0 or 1")


def test_a_head_written_in_one_class_generates_fits_and_has_intervals(x64):
    head = ThresholdHead(jnp.asarray(0.5), 5)
    model, student, data = _recording_problem(head, batch=8, length=40)
    assert set(np.unique(np.asarray(data.recordings))) <= {0.0, 1.0}
    rule = student.network.rule.with_trainable(student.network.rule.mask(["x*y", "y^2*w"]))
    student = eqx.tree_at(lambda m: m.network.rule, student, rule)
    loss = mp.losses.RecordingLoss()
    result = mp.fit(student, data, loss, steps=20, progress=False)
    fitted = result.model.network.rule
    assert result.history.loss[-1] < result.history.loss[0]
    post = mp.laplace(result.model, data, loss)
    lo, hi = post.interval(0.95)
    for term, true in (("x*y", 1.0), ("y^2*w", -1.0)):
        assert lo.network.rule.coefficient(term) < fitted.coefficient(term)
        assert fitted.coefficient(term) < hi.network.rule.coefficient(term)
        # the estimate is near the truth, on the scale of its own interval
        half = hi.network.rule.coefficient(term) - fitted.coefficient(term)
        assert abs(fitted.coefficient(term) - true) < 3 * half
    # and the head's own parameter can be trained by the filter spec
    spec = jax.tree.map(lambda _: False, result.model)
    spec = eqx.tree_at(lambda m: m.head.threshold, spec, True)
    moved = eqx.tree_at(lambda m: m.head.threshold, result.model, jnp.asarray(0.4))
    refit = mp.fit(moved, data, loss, filter_spec=spec, steps=10, progress=False)
    assert abs(float(refit.model.head.threshold) - 0.5) < 0.05


def test_compare_models_scores_poisson_with_its_exact_log_likelihood(x64):
    from scipy.stats import poisson

    head = mp.nn.PoissonHead(5, gain=2.0, offset=1.0)
    model, _, data = _recording_problem(head)
    cmp = mp.compare_models({"truth": model}, data, mp.losses.RecordingLoss(), refit=False)
    sim = mp.simulate_recordings(model.network, data)
    rate = np.exp(np.asarray(jax.vmap(head.predict)(sim.outputs)))
    expected = poisson.logpmf(np.asarray(data.recordings), rate).sum()
    np.testing.assert_allclose(float(cmp.log_likelihood[0]), expected, rtol=1e-10)


def test_bad_input_is_named():
    rule = mp.TaylorRule.from_expression(OJA)
    with pytest.raises(mp.MetaplasticError, match=r"gives 3 outputs .* takes 4 inputs"):
        mp.nn.Chain(_layer(rule, 2, 3), _layer(rule, 4, 2))
    with pytest.raises(mp.MetaplasticError, match="records 7 neurons .* has 5 outputs"):
        mp.nn.Model(_layer(rule), mp.nn.PoissonHead(7))
    reward_rule = mp.TaylorRule.from_expression("x*r", ("x", "y", "w", "r"))
    with pytest.raises(mp.MetaplasticError, match="reward factor 'r'"):
        mp.simulate_network(_layer(reward_rule), jnp.zeros((5, 6)), jnp.ones((3, 6)))
    x = np.ones((2, 3, 6))
    w0 = np.zeros((2, 5, 6))
    counts = np.ones((2, 3, 5))
    counts[1, 2, 4] = 0.5
    with pytest.raises(mp.MetaplasticError, match=r"spike counts .*\(1, 2, 4\) is 0.5"):
        mp.data.RecordingDataset(x, counts, w0, head=mp.nn.PoissonHead(5))
    counts[1, 2, 4] = -1
    with pytest.raises(mp.MetaplasticError, match="non-negative integers"):
        mp.data.RecordingDataset(x, counts, w0, head=mp.nn.PoissonHead(5))
    fluorescence = np.ones((2, 3, 5))
    fluorescence[0, 1, 2] = np.nan
    with pytest.raises(mp.MetaplasticError, match="recordings holds a non-finite value"):
        mp.data.RecordingDataset(x, fluorescence, w0, head=mp.nn.CalciumHead(5))
    with pytest.raises(mp.MetaplasticError, match="records 4 neurons but the recordings have 5"):
        mp.data.RecordingDataset(x, np.ones((2, 3, 5)), w0, head=mp.nn.CalciumHead(4))
    with pytest.raises(mp.MetaplasticError, match="batch axis"):
        mp.data.RecordingDataset(x, np.ones((2, 3, 5)), np.zeros((5, 6)))
    with pytest.raises(mp.MetaplasticError, match="decay must be in"):
        mp.nn.CalciumHead(decay=1.0)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), float("nan")])
def test_every_clipped_layer_refuses_the_same_bad_weight_bound(bound):
    """The recurrent layer, the fly's mushroom body and the per-fly fits check a weight bound
    in one place, with one message."""
    message = (
        rf"weight_bound must be None or a positive finite number, got {re.escape(repr(bound))}"
    )
    with pytest.raises(mp.MetaplasticError, match=message):
        mp.nn.PlasticRecurrent(mp.rules.oja(), 2, 3, weight_bound=bound)
    with pytest.raises(mp.MetaplasticError, match=message):
        mp.behaviour.MushroomBody(mp.rules.reward_modulated(), weight_bound=bound, key=jr.key(0))
    assert mp.nn.PlasticRecurrent(mp.rules.oja(), 2, 3, weight_bound=2.0).weight_bound == 2.0


def test_recording_loss_refuses_a_model_that_is_not_one():
    _, _, data = _recording_problem(mp.nn.GaussianHead(5))
    with pytest.raises(mp.MetaplasticError, match="RecordingLoss fits a metaplastic.nn.Model"):
        mp.fit(
            _layer(mp.TaylorRule.zeros()), data, mp.losses.RecordingLoss(), steps=1, progress=False
        )


def test_observations_take_a_likelihood_object_or_its_name():
    a = jnp.zeros(3)
    obs = mp.losses.Observations(a, a, jnp.ones(3, bool), "poisson")
    assert isinstance(obs.likelihood, mp.losses.Poisson)
    with pytest.raises(mp.MetaplasticError, match="likelihood must be"):
        mp.losses.Observations(a, a, jnp.ones(3, bool), "gamma")


def test_taylor_reverse_takes_the_gradient_of_any_head_on_a_plastic_dense_layer(x64):
    """`Automatic` picks the hand-written pass for a `RecordingLoss` on a Taylor-rule layer
    (any head), and its gradient is `jax.grad`'s through the scan."""
    model, _, data = _recording_problem(mp.nn.PoissonHead(5, gain=2.0, offset=1.0))
    loss = mp.losses.RecordingLoss()
    chosen = mp.Automatic().choose(loss, model, data, jacobian=False)
    assert isinstance(chosen, mp.TaylorReverse)
    recurrent = mp.nn.Model(mp.nn.PlasticRecurrent(mp.rules.oja(), 6, 5), model.head)
    assert not mp.TaylorReverse().supports(loss, recurrent, data, jacobian=False)
    params, static = eqx.partition(model, mp.rule_filter_spec(model))
    fast = mp.TaylorReverse().value_and_grad(loss, params, static, data)
    plain = mp.ReverseMode().value_and_grad(loss, params, static, data)
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-12)
    a, b = fast[1].network.rule.coefficients, plain[1].network.rule.coefficients
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max())


def test_public_modules_say_what_they_export():
    for module in (mp.losses, mp.metrics, mp.nn, mp.data, mp.plot, mp.runs, mp.sharding):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
    # names a module merely imports are not part of its interface
    assert "PlasticDense" not in mp.losses.__all__ and "simulate" not in mp.metrics.__all__
    assert {"RecordingLoss", "Poisson", "AbstractLikelihood"} <= set(mp.losses.__all__)


def test_the_mushroom_body_is_a_layer_of_the_one_scan(x64):
    """The fly's network is a zoo layer: scanning its plasticity step over the accepted
    presentations with `simulate_network` gives the replayed weights, and a closed-loop task
    is an environment of the same scan."""
    rule = mp.TaylorRule.from_expression("x*r - 0.3*y*w", ("x", "y", "w", "r"))
    net = mp.behaviour.MushroomBody(rule, n_in=4, hidden=6, key=jr.key(0))
    assert (net.in_size, net.out_size) == (4, 6)
    task = mp.behaviour.OperantTask(block_lengths=15)
    encoding = mp.behaviour.OdourEncoding(4, key=jr.key(1))
    gen = mp.behaviour.generate_behaviour(net, task, encoding, 2, key=jr.key(2))
    data = gen.data
    accepted = (data.choices > 0.5) & data.presentation_mask
    x_acc = jnp.einsum("btp,btpi->bti", accepted.astype(data.inputs.dtype), data.inputs)
    signals = data.rewards - data.expected_rewards
    sim = jax.vmap(lambda w0, x, r, m: mp.simulate_network(net, w0, x, r, m, return_states=True))(
        gen.initial_weights, x_acc, signals, accepted.any(axis=-1) & data.trial_mask
    )
    replayed = mp.behaviour.replay(net, data, gen.initial_weights)
    np.testing.assert_array_equal(sim.states, replayed.weights)
    # Replayed on the inputs that generated the choices, the weights are the true ones.
    generating = eqx.tree_at(lambda d: d.inputs, data, gen.generating_inputs)
    truth = mp.behaviour.replay(net, generating, gen.initial_weights).weights
    np.testing.assert_allclose(truth, gen.weights, rtol=1e-12, atol=1e-14)
    env = mp.behaviour.OperantEnvironment(task)
    with pytest.raises(mp.MetaplasticError, match="environment decides"):
        mp.simulate_network(
            net, net.initial_weights, jnp.zeros((3, 4)), jnp.zeros(3), environment=env
        )


def test_checkpointing_is_the_strategys_business(x64):
    """`ReverseMode(checkpoint=...)` checkpoints every simulation of the loss without the
    loss taking an option: the same gradient, and the traced program holds the remat."""
    layer = _layer(mp.TaylorRule.from_expression(OJA))
    data, _ = mp.generate_activity(
        layer,
        jr.normal(jr.key(3), (2, 10, 6)),
        0.3 * jr.normal(jr.key(4), (2, 5, 6)),
        key=jr.key(5),
    )
    params, static = eqx.partition(layer, mp.rule_filter_spec(layer))
    loss = mp.losses.ActivityMSE()
    grads = {}
    for checkpoint in (False, True, 3):
        strategy = mp.ReverseMode(checkpoint=checkpoint)
        fn = lambda p, strategy=strategy: strategy.value_and_grad(loss, p, static, data)[1]
        grads[checkpoint] = fn(params).rule.coefficients
        remat = "remat" in str(jax.make_jaxpr(fn)(params))
        assert remat == (checkpoint is not False)
    np.testing.assert_allclose(grads[True], grads[False], rtol=1e-12)
    np.testing.assert_allclose(grads[3], grads[False], rtol=1e-12)
    assert mp._simulate.current_checkpoint() is False  # the context ends with the strategy
    with pytest.raises(mp.MetaplasticError, match="segment length"):
        with mp.checkpointing(0):
            pass


def test_fit_and_laplace_vmap_per_member_arrays_that_do_not_train(x64):
    """`per_member=`: each ensemble member with its own frozen-term mask is fitted, and its
    posterior taken, exactly as it would be alone."""
    rule = mp.TaylorRule.from_expression(OJA)
    truth = mp.nn.PlasticDense(rule, eta=0.5, activation="identity")
    x = 0.5 * jr.normal(jr.key(0), (2, 6, 20, 4))
    w0 = 0.3 * jr.normal(jr.key(1), (2, 6, 3, 4))
    datas = [mp.generate_activity(truth, x[i], w0[i], key=jr.key(2 + i))[0] for i in range(2)]
    datas = [
        eqx.tree_at(
            lambda d: d.activity, d, d.activity + 0.01 * jr.normal(jr.key(9 + i), d.activity.shape)
        )
        for i, d in enumerate(datas)
    ]
    masks = np.zeros((2, 3, 3, 3), bool)
    for i, terms in enumerate((["x*y", "y^2*w"], ["x*y", "y^2*w", "x"])):
        masks[i] = rule.mask(terms)

    def student(mask):
        return mp.nn.PlasticDense(
            mp.TaylorRule(jnp.zeros((3, 3, 3)), trainable=mask), eta=0.5, activation="identity"
        )

    loss = mp.losses.ActivityMSE()
    alone = [
        mp.fit(student(m), d, loss, steps=10, progress=False).model for m, d in zip(masks, datas)
    ]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *datas)
    start = eqx.tree_at(
        lambda m: (m.rule.coefficients, m.rule.trainable),
        student(masks[0]),
        (jnp.zeros((2, 3, 3, 3)), jnp.asarray(masks)),
    )
    own = lambda m: m.rule.trainable
    together = mp.fit(start, stacked, loss, steps=10, progress=False, ensemble=True, per_member=own)
    fitted = np.asarray(together.model.rule.coefficients)
    for i in range(2):
        np.testing.assert_allclose(fitted[i], alone[i].rule.coefficients, rtol=1e-9, atol=1e-12)
        assert np.all(fitted[i][~masks[i]] == 0.0)  # frozen terms never move
    post = mp.laplace(together.model, stacked, loss, ensemble=True, per_member=own)
    for i in range(2):
        single = mp.laplace(alone[i], datas[i], loss)
        np.testing.assert_allclose(post.covariance[i], single.covariance, rtol=1e-6, atol=1e-14)
        np.testing.assert_allclose(post.noise_scale[i], single.noise_scale, rtol=1e-9)
        assert int(post.rank[i]) == int(single.rank) == masks[i].sum()
    with pytest.raises(mp.MetaplasticError, match="needs ensemble=True"):
        mp.fit(alone[0], datas[0], loss, steps=1, progress=False, per_member=own)
    with pytest.raises(mp.MetaplasticError, match="arrays that train"):
        mp.fit(
            start,
            stacked,
            loss,
            steps=1,
            progress=False,
            ensemble=True,
            per_member=lambda m: m.rule.coefficients,
        )
    bad = eqx.tree_at(lambda m: m.rule.trainable, start, jnp.asarray(masks[:1]))
    with pytest.raises(mp.MetaplasticError, match="leading member axis of 2"):
        mp.fit(bad, stacked, loss, steps=1, progress=False, ensemble=True, per_member=own)
