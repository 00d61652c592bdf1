import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import metaplastic as mp


FACTORS = ("x", "y", "w", "r")


# ---------------------------------------------------------------------------------- the task
def test_block_schedule():
    task = mp.behaviour.OperantTask(((0.2, 0.8), (0.9, 0.1)), (2, 3))
    assert task.n_trials == 5
    np.testing.assert_allclose(
        task.trial_probabilities(), [[0.2, 0.8]] * 2 + [[0.9, 0.1]] * 3, rtol=1e-6
    )
    default = mp.behaviour.OperantTask()
    assert default.n_trials == 240 and default.block_lengths == (80, 80, 80)
    np.testing.assert_allclose(default.trial_probabilities()[80], [0.9, 0.1], rtol=1e-6)
    with pytest.raises(mp.MetaplasticError, match="probabilities"):
        mp.behaviour.OperantTask(((0.2, 1.5),))
    with pytest.raises(mp.MetaplasticError, match="block_lengths"):
        mp.behaviour.OperantTask(((0.2, 0.8), (0.5, 0.5)), (3,))
    with pytest.raises(mp.MetaplasticError, match="max_presentations"):
        mp.behaviour.OperantTask(max_presentations=0)


def test_bait_and_collect_by_hand():
    # Baiting: a reward drawn once stays until collected (u < p draws it).
    baited = mp.behaviour.bait(
        jnp.array([False, False]), jnp.array([0.2, 0.8]), jnp.array([0.5, 0.5])
    )
    assert baited.tolist() == [False, True]
    baited = mp.behaviour.bait(baited, jnp.array([0.2, 0.8]), jnp.array([0.1, 0.9]))
    assert baited.tolist() == [True, True]  # B stays baited although its draw failed
    # Accepting B collects it and clears only B.
    reward, baited = mp.behaviour.collect_reward(baited, jnp.array(1), jnp.array(True))
    assert float(reward) == 1.0 and baited.tolist() == [True, False]
    # Accepting an unbaited odour gives nothing and changes nothing.
    reward, baited = mp.behaviour.collect_reward(baited, jnp.array(1), jnp.array(True))
    assert float(reward) == 0.0 and baited.tolist() == [True, False]
    # A trial ended by the cap (no acceptance) collects nothing and keeps the bait.
    reward, baited = mp.behaviour.collect_reward(baited, jnp.array(0), jnp.array(False))
    assert float(reward) == 0.0 and baited.tolist() == [True, False]


def test_task_sequence_by_hand():
    # Block 1 baits only A (p = 1, 0), block 2 only B (p = 0, 1): the draws are certain, so
    # the rewards of a scripted sequence of accepted odours can be checked by hand.
    task = mp.behaviour.OperantTask(((1.0, 0.0), (0.0, 1.0)), 3, expectation_window=2)
    probs = task.trial_probabilities()
    script = [  # (accepted odour, accepted?) -> expected reward, bait after the trial
        (1, True, 0.0, [True, False]),  # B unbaited; A stays baited
        (0, True, 1.0, [False, False]),  # A collected
        (1, True, 0.0, [True, False]),  # A re-baited at the start, B still nothing
        (0, True, 1.0, [False, True]),  # block 2: A's old bait carried over, B baited
        (0, False, 0.0, [False, True]),  # the cap: nothing collected, B kept
        (1, True, 1.0, [False, False]),  # B collected
    ]
    state = task.init_state()
    rewards, expected = [], []
    for t, (odour, accepted, want_r, want_bait) in enumerate(script):
        state = task.start_trial(state, probs[t], jnp.array([0.5, 0.5]))
        expected.append(float(task.expected_reward(state)))
        r, state = task.end_trial(state, jnp.array(odour), jnp.array(accepted))
        rewards.append(float(r))
        assert float(r) == want_r, t
        assert state.baited.tolist() == want_bait, t
    # E[R] is the mean of the previous two rewards, starting from zeros.
    assert expected == [0.0, 0.0, 0.5, 0.5, 0.5, 0.5]
    np.testing.assert_allclose(mp.behaviour.expected_reward(jnp.array(rewards), 2), expected)


def test_expected_reward_moving_average():
    r = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(
        mp.behaviour.expected_reward(r, 3), [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3], rtol=1e-6
    )
    np.testing.assert_allclose(mp.behaviour.expected_reward(r, 1), [0, 1, 0, 1, 1])
    # Batched, and the default window of 10 with the history starting at zero.
    batch = jnp.ones((2, 12))
    np.testing.assert_allclose(
        mp.behaviour.expected_reward(batch)[0], [k / 10 for k in range(11)] + [1.0], rtol=1e-6
    )


# ---------------------------------------------------------------------------------- network
def test_encoding_and_network():
    enc = mp.behaviour.OdourEncoding(4, mean=0.75, variance=0.0, key=jr.key(0))
    x = enc(jnp.array([0, 1]), key=jr.key(1))
    assert (x > 0).sum(axis=1).tolist() == [2, 2]  # each odour drives its own half
    assert float(jnp.sum(x[0] * x[1])) == 0.0
    np.testing.assert_allclose(x.sum(axis=1), [1.5, 1.5])
    with pytest.raises(mp.MetaplasticError, match="even"):
        mp.behaviour.OdourEncoding(3)
    net = mp.behaviour.MushroomBody(mp.rules.reward_modulated(), n_in=4, hidden=5, key=jr.key(0))
    assert net.plastic.eta == 0.25 and net.plastic.activation == "tanh"
    np.testing.assert_allclose(net.readout.weight, np.full((1, 5), 1.0))
    assert net.initial_weights.shape == (5, 4)
    assert float(jnp.std(net.sample_initial_weights(200, key=jr.key(1)))) == pytest.approx(
        0.01, rel=0.05
    )
    w = jnp.full((5, 4), 0.2)
    y, logits = net.forward(w, x)
    np.testing.assert_allclose(logits, 5 * jnp.mean(jnp.tanh(w @ x.T), axis=0), rtol=1e-6)
    with pytest.raises(mp.MetaplasticError, match="reward_signal"):
        mp.behaviour.MushroomBody(
            mp.rules.reward_modulated(), reward_signal="dopamine", key=jr.key(0)
        )


# ---------------------------------------------------------------------------------- helpers
@functools.cache
def hand_dataset(inputs=True):
    """Two trajectories, three trials of up to three presentations, by hand."""
    odours = np.array(
        [
            [[0, 1, 0], [1, 0, 0], [1, 1, 1]],
            [[1, 0, 0], [0, 0, 0], [0, 1, 0]],
        ]
    )
    choices = np.array(
        [
            [[0, 1, 0], [1, 0, 0], [0, 0, 0]],  # trial 3: the cap, no acceptance
            [[0, 0, 1], [1, 0, 0], [0, 1, 0]],
        ],
        float,
    )
    pmask = np.array(
        [
            [[1, 1, 0], [1, 0, 0], [1, 1, 1]],
            [[1, 1, 1], [1, 0, 0], [1, 1, 0]],
        ],
        bool,
    )
    rewards = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    x = None
    if inputs:
        x = jr.normal(jr.key(3), odours.shape + (2,)) * 0.3 + 0.5
    return mp.behaviour.ChoiceDataset(
        odours,
        choices,
        pmask,
        np.ones((2, 3), bool),
        rewards,
        mp.behaviour.expected_reward(rewards, 2),
        x,
    )


def network(rule=None, **kw):
    rule = (
        mp.TaylorRule.from_expression("x*r - 0.3*y*w + 0.2*x*y", FACTORS) if rule is None else rule
    )
    kw.setdefault("init_std", 0.3)
    return mp.behaviour.MushroomBody(rule, key=jr.key(7), **kw)


@functools.cache
def padded_hand_dataset():
    return pad(hand_dataset())


def pad(data, trials=2, presentations=2, junk=7.0):
    """Pad a dataset with extra trials and presentations, and then write junk into every
    padded entry (behind the constructor's back) so only the masks can protect a loss."""
    b, t, p = data.odours.shape

    def grow(a, fill, axes):
        widths = [(0, 0)] * a.ndim
        if 1 in axes:
            widths[1] = (0, trials)
        if 2 in axes:
            widths[2] = (0, presentations)
        return np.pad(np.asarray(a), widths, constant_values=fill)

    padded = mp.behaviour.ChoiceDataset(
        grow(data.odours, 0, (1, 2)),
        grow(data.choices, 0.0, (1, 2)),
        grow(data.presentation_mask, False, (1, 2)),
        grow(data.trial_mask, False, (1,)),
        grow(data.rewards, 0.0, (1,)),
        grow(data.expected_rewards, 0.0, (1,)),
        np.pad(np.asarray(data.inputs), [(0, 0), (0, trials), (0, presentations), (0, 0)]),
    )
    pm, tm = padded.presentation_mask, padded.trial_mask
    return eqx.tree_at(
        lambda d: (d.choices, d.inputs, d.rewards, d.expected_rewards),
        padded,
        (
            jnp.where(pm, padded.choices, 1.0),
            jnp.where(pm[..., None], padded.inputs, junk),
            jnp.where(tm, padded.rewards, 1.0),
            jnp.where(tm, padded.expected_rewards, -junk),
        ),
    )


# ---------------------------------------------------------------------------------- replay
def test_update_uses_the_accepted_presentation():
    data = hand_dataset()
    net = network()
    rep = mp.behaviour.replay(net, data)
    w = net.initial_weights
    r = data.rewards - data.expected_rewards
    eta = 0.5
    for t in range(3):
        x = data.inputs[0, t]
        # Every presentation of a trial sees the weights before the trial's update.
        np.testing.assert_allclose(rep.hidden[0, t], jnp.tanh(x @ w.T), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            rep.logits[0, t], 0.5 * jnp.tanh(x @ w.T).sum(-1), rtol=1e-5, atol=1e-6
        )
        accepted = np.flatnonzero(np.asarray(data.choices[0, t]))
        if accepted.size:  # trial 0: the 2nd presentation, trial 1: the 1st
            xa = x[accepted[0]]
            w = w + eta * net.rule(xa, jnp.tanh(w @ xa), w, r[0, t])
        # else: trial 2 hit the cap, no update
        np.testing.assert_allclose(rep.weights[0, t], w, rtol=1e-5, atol=1e-6)
    # A wrong presentation would give another weight change.
    wrong = net.initial_weights + eta * net.rule(
        data.inputs[0, 0, 0],
        jnp.tanh(net.initial_weights @ data.inputs[0, 0, 0]),
        net.initial_weights,
        r[0, 0],
    )
    assert not np.allclose(rep.weights[0, 0], wrong, atol=1e-4)


def test_reward_signal_option():
    data = hand_dataset()
    pe = mp.behaviour.replay(network(), data).weights
    raw = mp.behaviour.replay(network(reward_signal="reward"), data).weights
    assert not np.allclose(pe, raw)
    data_no_expectation = eqx.tree_at(
        lambda d: d.expected_rewards, data, jnp.zeros_like(data.expected_rewards)
    )
    np.testing.assert_allclose(
        mp.behaviour.replay(network(), data_no_expectation).weights, raw, rtol=1e-6
    )


@eqx.filter_jit
def losses_of(net, data):
    """The choice loss, its gradient, the log-likelihoods and the replayed weights."""
    value, grad = eqx.filter_value_and_grad(mp.behaviour.ChoiceBCE())(net, data)
    ll = mp.behaviour.choice_log_likelihood(net, data)
    return value, grad.plastic.rule.coefficients, ll, mp.behaviour.replay(net, data).weights


def test_padding_never_changes_a_loss_or_metric():
    data = hand_dataset()
    padded = padded_hand_dataset()
    packed = mp.behaviour.PackedChoiceDataset.from_choices(padded)
    assert packed.choices.shape == (2, 6)
    net, ref = network(), network(mp.rules.reward_modulated())
    plain = losses_of(net, data)
    # Padded with junk behind the masks, and packed: the same loss, gradient and weights.
    for other in (losses_of(net, padded), losses_of(net, packed)):
        np.testing.assert_allclose(other[0], plain[0], rtol=1e-6)
        np.testing.assert_allclose(other[1], plain[1], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(other[2], plain[2], rtol=1e-6)
        np.testing.assert_allclose(other[3][:, :3], plain[3], rtol=1e-6)
    a = mp.behaviour.compare_behaviour(ref, net, data)  # R² of weights and activity, % deviance
    b = mp.behaviour.compare_behaviour(ref, net, padded)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
    # The mean is over valid presentations only: 12 of them, not 18 (or 40 padded).
    assert int(data.presentation_mask.sum()) == 12
    assert float(plain[0]) == pytest.approx(-float(plain[2].sum()) / 12, rel=1e-6)


def test_null_model_deviance():
    data = hand_dataset()
    # With zero initial weights and no plasticity p(accept) = 1/2 everywhere.
    flat = mp.behaviour.null_network(network(init_std=0.0))
    n = int(data.presentation_mask.sum(axis=(1, 2))[0])
    np.testing.assert_allclose(
        -2 * mp.behaviour.choice_log_likelihood(flat, data)[0], 2 * n * math.log(2), rtol=1e-6
    )
    net = network()
    null = mp.behaviour.null_network(net)
    np.testing.assert_allclose(mp.behaviour.percent_deviance(null, data), [0.0, 0.0], atol=1e-4)
    # The null model's weights never move.
    rep = mp.behaviour.replay(null, data)
    np.testing.assert_allclose(rep.weights, jnp.broadcast_to(net.initial_weights, (2, 3, 10, 2)))
    # Percent deviance against hand-computed deviances.
    ll, ll0 = (
        mp.behaviour.choice_log_likelihood(net, data),
        mp.behaviour.choice_log_likelihood(null, data),
    )
    np.testing.assert_allclose(
        mp.behaviour.percent_deviance(net, data), 100 * (-2 * ll0 + 2 * ll) / (-2 * ll0), rtol=1e-5
    )


def test_choice_log_likelihood_by_hand_away_from_one_half():
    # Large initial weights put p(accept) far from 1/2, where a swapped label or a flipped
    # logit changes the likelihood.
    data = hand_dataset()
    net = network(mp.rules.reward_modulated(), init_std=1.0)
    w0 = np.asarray(net.initial_weights, np.float64)
    x = np.asarray(data.inputs, np.float64)
    choices, pmask = np.asarray(data.choices), np.asarray(data.presentation_mask)
    signal = np.asarray(data.rewards) - np.asarray(data.expected_rewards)
    ll, flipped, probabilities = np.zeros(2), np.zeros(2), []
    for b in range(2):
        w = w0.copy()
        for t in range(3):
            for p in np.flatnonzero(pmask[b, t]):
                logit = (5.0 / 10) * np.tanh(w @ x[b, t, p]).sum()
                prob = 1 / (1 + np.exp(-logit))
                probabilities.append(prob)
                c = choices[b, t, p]
                ll[b] += c * np.log(prob) + (1 - c) * np.log(1 - prob)
                flipped[b] += (1 - c) * np.log(prob) + c * np.log(1 - prob)
                if c == 1:  # x*r, with eta = 1 / n_in, at the accepted presentation
                    w = w + 0.5 * signal[b, t] * x[b, t, p][None, :]
    assert max(abs(p - 0.5) for p in probabilities) > 0.3
    assert np.all(np.abs(ll - flipped) > 0.5)
    for d in (data, mp.behaviour.PackedChoiceDataset.from_choices(data)):
        np.testing.assert_allclose(mp.behaviour.choice_log_likelihood(net, d), ll, rtol=1e-5)
    n = int(pmask.sum())
    np.testing.assert_allclose(mp.behaviour.ChoiceBCE()(net, data), -ll.sum() / n, rtol=1e-5)


def test_encode_odours_fills_inputs_with_fresh_noise():
    data = hand_dataset(inputs=False)
    enc = mp.behaviour.OdourEncoding(2, key=jr.key(0))
    with pytest.raises(mp.MetaplasticError, match="encode_odours"):
        mp.behaviour.ChoiceBCE()(network(), data)
    a = mp.behaviour.encode_odours(data, enc, key=jr.key(1))
    b = mp.behaviour.encode_odours(data, enc, key=jr.key(2))
    assert a.inputs.shape == (2, 3, 3, 2)
    assert not np.allclose(a.inputs, b.inputs)
    assert bool(jnp.all(a.inputs[~data.presentation_mask] == 0))
    np.testing.assert_array_equal(a.odours, data.odours)


def test_encode_odours_centres_each_odour_on_its_own_mean():
    # Many presentations of both odours, six units split at random between them: the inputs
    # of odour k are centred on means[k], with the encoding's noise around it.
    rng = np.random.default_rng(0)
    odours = rng.integers(0, 2, (4, 100, 3))
    pmask = np.ones(odours.shape, bool)
    choices = np.zeros(odours.shape)
    choices[:, :, -1] = 1.0
    rewards = np.zeros((4, 100))
    data = mp.behaviour.ChoiceDataset(
        odours, choices, pmask, np.ones((4, 100), bool), rewards, rewards
    )
    enc = mp.behaviour.OdourEncoding(6, mean=0.8, variance=0.01, key=jr.key(3))
    means = np.asarray(enc.means)
    assert not np.array_equal(means[0], np.repeat([0.8, 0.0], 3))  # not the unshuffled split
    x = np.asarray(mp.behaviour.encode_odours(data, enc, key=jr.key(4)).inputs)
    for k in (0, 1):
        of_k = x[odours == k]
        np.testing.assert_allclose(of_k.mean(0), means[k], atol=0.01)
        np.testing.assert_allclose(of_k.std(0), 0.1, rtol=0.1)
    # Without noise every presentation is exactly its odour's mean.
    exact = mp.behaviour.OdourEncoding(6, mean=0.8, variance=0.0, key=jr.key(3))
    x = np.asarray(mp.behaviour.encode_odours(data, exact, key=jr.key(4)).inputs)
    np.testing.assert_array_equal(x, means[odours])


# ---------------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def generated():
    task = mp.behaviour.OperantTask(((0.2, 0.8), (0.9, 0.1)), 30, max_presentations=3)
    enc = mp.behaviour.OdourEncoding(2, key=jr.key(0))
    net = mp.behaviour.MushroomBody(mp.rules.reward_modulated(), key=jr.key(1))
    return task, enc, net, mp.behaviour.generate_behaviour(net, task, enc, 4, key=jr.key(2))


def test_generation_is_reproducible_from_a_key(generated):
    task, enc, net, g = generated
    again = mp.behaviour.generate_behaviour(net, task, enc, 4, key=jr.key(2))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    other = mp.behaviour.generate_behaviour(net, task, enc, 4, key=jr.key(3))
    assert not np.array_equal(g.data.rewards, other.data.rewards)


def test_generated_behaviour_follows_the_task(generated):
    task, enc, net, g = generated
    d = g.data
    assert d.odours.shape[:2] == (4, 60) and d.odours.shape[2] <= 3
    assert g.weights.shape == (4, 60, 10, 2)
    np.testing.assert_allclose(
        d.expected_rewards, mp.behaviour.expected_reward(d.rewards), atol=1e-6
    )
    accepted = np.asarray(d.accepted.any(-1))
    odour = np.asarray((d.accepted * d.odours).sum(-1))
    baited = np.asarray(g.baited)
    rewards = np.asarray(d.rewards)
    # A reward comes exactly when the accepted odour was baited during the trial.
    hit = accepted & baited[np.arange(4)[:, None], np.arange(60)[None], odour]
    np.testing.assert_array_equal(rewards, hit.astype(float))
    # Bait persists: what was baited and not collected is still baited next trial.
    kept = baited[:, :-1] & ~(hit[:, :-1, None] & (np.arange(2) == odour[:, :-1, None]))
    assert np.all(baited[:, 1:] >= kept)
    # Trials that hit the cap: every presentation valid and rejected, no reward, no update.
    capped = ~accepted
    assert capped.any(), "the cap of 3 presentations should be reached sometimes"
    assert np.all(np.asarray(d.presentation_mask.sum(-1))[capped] == 3)
    assert np.all(rewards[capped] == 0)
    w = np.asarray(g.weights)
    before = np.concatenate([np.asarray(g.initial_weights)[:, None], w[:, :-1]], 1)
    np.testing.assert_array_equal(w[capped], before[capped])
    # x*r changes the weights whenever a trial ends in acceptance with r = R - E[R] != 0.
    moved = accepted & (np.abs(rewards - np.asarray(d.expected_rewards)) > 1e-6)
    assert np.all(np.abs(w[moved] - before[moved]).max(axis=(-1, -2)) > 0)
    # Presentations end at the first acceptance.
    last = np.asarray(d.presentation_mask.sum(-1)) - 1
    acc_at = np.asarray(jnp.argmax(d.choices, -1))
    np.testing.assert_array_equal(acc_at[accepted], last[accepted])


def test_closed_loop_equals_teacher_forcing_on_the_generating_inputs(generated):
    task, enc, net, g = generated
    exact = eqx.tree_at(lambda d: d.inputs, g.data, g.generating_inputs)
    rep = mp.behaviour.replay(net, exact, g.initial_weights)
    np.testing.assert_allclose(rep.weights, g.weights, rtol=1e-5, atol=1e-6)
    # The training inputs are a fresh draw of the encoding, not the generating inputs.
    assert not np.allclose(g.data.inputs, g.generating_inputs)
    kept = mp.behaviour.generate_behaviour(net, task, enc, 4, key=jr.key(2), resample_inputs=False)
    np.testing.assert_array_equal(kept.data.inputs, g.generating_inputs)


@pytest.mark.parametrize("p_accept", [0.9, 0.1])
def test_acceptance_frequency_matches_the_readout(p_accept):
    # Zero weights and no plasticity: the logit of accepting is the readout bias alone, so
    # every presentation is accepted with probability p_accept; a flipped comparison of the
    # uniform draw would accept with probability 1 - p_accept.
    task = mp.behaviour.OperantTask(((0.5, 0.5),), 50, max_presentations=4)
    enc = mp.behaviour.OdourEncoding(2, key=jr.key(0))
    net = mp.behaviour.MushroomBody(mp.TaylorRule.zeros(FACTORS), init_std=0.0, key=jr.key(1))
    bias = jnp.full_like(net.readout.bias, math.log(p_accept / (1 - p_accept)))
    net = eqx.tree_at(lambda m: m.readout.bias, net, bias)
    d = mp.behaviour.generate_behaviour(net, task, enc, 40, key=jr.key(2)).data
    first = np.asarray(d.choices[:, :, 0])  # 2000 first presentations, each Bernoulli(p)
    assert first.mean() == pytest.approx(p_accept, abs=0.03)
    # Every presentation shown is a Bernoulli(p) draw until the first acceptance or the cap.
    shown = np.asarray(d.presentation_mask)
    assert np.asarray(d.choices)[shown].mean() == pytest.approx(p_accept, abs=0.03)
    # The replayed model gives the same probability everywhere.
    logits = mp.behaviour.replay(net, d).logits
    np.testing.assert_allclose(jax.nn.sigmoid(logits)[shown], p_accept, rtol=1e-5)


@pytest.mark.slow
def test_neural_readout_loss(generated):
    task, enc, net, _ = generated
    readout = mp.nn.ActivityReadout(recorded_fraction=0.5, noise_std=0.0)
    g = mp.behaviour.generate_behaviour(
        net, task, enc, 3, key=jr.key(5), resample_inputs=False, readout=readout
    )
    data = mp.behaviour.ChoiceActivityDataset.from_generated(g)
    assert int(data.neuron_mask[0].sum()) == 5
    start = eqx.tree_at(lambda m: m.initial_weights, net, g.initial_weights[0])
    one = jax.tree.map(lambda a: a[:1], data)
    # The true network from the true initial weights reproduces the noise-free recording.
    loss = mp.behaviour.ChoiceActivity(activity_weight=10.0)(start, one)
    np.testing.assert_allclose(loss, mp.behaviour.ChoiceBCE()(start, one.choices), rtol=1e-5)
    other = start.with_rule(mp.TaylorRule.zeros(FACTORS))
    assert float(mp.behaviour.ChoiceActivity()(other, one)) > float(
        mp.behaviour.ChoiceBCE()(other, one.choices)
    )


# ---------------------------------------------------------------------------------- fitting
@pytest.mark.slow
def test_recover_rule_runs_end_to_end():
    res = mp.behaviour.recover_rule(
        mp.rules.reward_modulated(),
        seeds=2,
        n_train=2,
        n_test=2,
        task=mp.behaviour.OperantTask(((0.2, 0.8), (0.9, 0.1)), 10),
        steps=2,
        key=jr.key(0),
    )
    assert res.fitted.rule.coefficients.shape == (2, 3, 3, 3, 3)
    assert res.fit.n_traces <= 1  # traced once, or not at all if an equal fit had compiled it
    assert res.fit.history.loss.shape == (2, 2)
    # Gauss-Newton steps are only taken when they lower the objective.
    assert np.all(np.diff(res.fit.history.loss, axis=0) <= 0)
    for k in ("r2_weights", "r2_activity", "percent_deviance", "true_percent_deviance"):
        assert res.scores[k].shape == (2,) and res.per_trajectory[k].shape == (2, 2)
        assert np.all(np.isfinite(res.scores[k]))


def test_compare_ensemble_matches_members():
    data = hand_dataset()
    ref = network(mp.rules.reward_modulated())
    coefficients = jnp.stack(
        [network().rule.coefficients, mp.rules.reward_modulated().coefficients * 0.5]
    )
    stacked = jax.tree.map(
        lambda *a: jnp.stack(a),
        *[mp.TaylorRule(c, FACTORS) for c in coefficients],
    )
    ens = ref.with_rule(stacked)
    both = mp.behaviour.compare_behaviour(ref, ens, data, ensemble=True, data_ensemble_axis=None)
    for i in range(2):
        one = mp.behaviour.compare_behaviour(
            ref, ref.with_rule(mp.TaylorRule(coefficients[i], FACTORS)), data
        )
        for k in one:
            np.testing.assert_allclose(both[k][i], one[k], rtol=1e-5, err_msg=k)
    # The deviances against the mushroom body written out in numpy: member 1 learns by
    # 0.5·x·r, the reference by x·r, the null model not at all.
    w0 = np.asarray(ref.initial_weights, np.float64)
    for b in range(2):
        one = jax.tree.map(lambda a, b=b: a[b : b + 1], data)
        ll = {k: _numpy_log_likelihood(np.array([0.0, k]), one, w0) for k in (0.0, 0.5, 1.0)}
        # D = -2 log-likelihood: percent deviance explained 100 (1 - ll / ll_null)
        half, whole = (100 * (1 - ll[k] / ll[0.0]) for k in (0.5, 1.0))
        np.testing.assert_allclose(both["percent_deviance"][1][b], half, rtol=1e-4)
        np.testing.assert_allclose(both["true_percent_deviance"][1][b], whole, rtol=1e-4)
        assert abs(half - whole) > 1  # the two rules are told apart


def _numpy_log_likelihood(theta, data, w0, readout_weight=5.0):
    """`Σ log p(choice)` of the mushroom body with the rule `Δw_ij = θ_x x_j + θ_xr x_j r`,
    teacher-forced, written out in numpy (batched over flies)."""
    x = np.asarray(data.inputs, np.float64)
    choices, pmask = np.asarray(data.choices), np.asarray(data.presentation_mask)
    accepted = (choices > 0.5) & pmask
    signal = np.asarray(data.rewards) - np.asarray(data.expected_rewards)
    batch, trials = choices.shape[:2]
    hidden, n_in = w0.shape
    w = np.broadcast_to(w0, (batch, hidden, n_in)).astype(np.float64)
    ll = 0.0
    for t in range(trials):
        logits = readout_weight / hidden * np.tanh(np.einsum("bhi,bpi->bph", w, x[:, t])).sum(-1)
        c = choices[:, t]
        ll += np.sum(
            np.where(
                pmask[:, t], c * -np.logaddexp(0, -logits) - (1 - c) * np.logaddexp(0, logits), 0.0
            )
        )
        x_acc = np.einsum("bp,bpi->bi", accepted[:, t], x[:, t])
        delta = (theta[0] + theta[1] * signal[:, t])[:, None] * x_acc  # (batch, n_in)
        w = w + (1.0 / n_in) * delta[:, None, :]
    return ll


def _newton_maximum(f, theta, h=1e-5, iterations=30):
    """Maximise `f` by Newton's method with central finite-difference derivatives; returns
    the maximum and the gradient and Hessian there."""
    eye = np.eye(theta.size) * h

    def derivatives(theta):
        grad = np.array([(f(theta + e) - f(theta - e)) / (2 * h) for e in eye])
        hess = np.array(
            [
                [
                    (f(theta + a + b) - f(theta + a - b) - f(theta - a + b) + f(theta - a - b))
                    / (4 * h * h)
                    for b in eye
                ]
                for a in eye
            ]
        )
        return grad, hess

    for _ in range(iterations):
        grad, hess = derivatives(theta)
        step = -np.linalg.solve(hess, grad)
        while f(theta + step) < f(theta):  # halve steps that do not climb
            step = step / 2
        theta = theta + step
        if np.max(np.abs(step)) < 1e-9:
            break
    return (theta, *derivatives(theta))


def test_choice_fit_matches_a_numpy_newton_maximum_likelihood(x64):
    # Flies learning by Δw = 2·x·r; the student frees the terms x and x*r and starts at zero.
    factors = ("x", "w", "r")
    truth = mp.TaylorRule.from_expression("2*x*r", factors=factors, order=1)
    teacher = mp.behaviour.MushroomBody(truth, key=jr.key(0))
    task = mp.behaviour.OperantTask(((0.8, 0.2), (0.2, 0.8)), 30, max_presentations=3)
    enc = mp.behaviour.OdourEncoding(2, key=jr.key(1))
    data = mp.behaviour.generate_behaviour(teacher, task, enc, 4, key=jr.key(2)).data
    zero = mp.TaylorRule.zeros(factors, order=1)
    student = teacher.with_rule(
        mp.TaylorRule(zero.coefficients, factors, trainable=zero.mask(["x", "x*r"]))
    )
    result = mp.fit(
        student,
        data,
        mp.behaviour.ChoiceBCE(),
        solver=mp.LevenbergMarquardt(),
        steps=15,
        progress=False,
    )
    fitted = np.array([result.model.rule.coefficient(t) for t in ("x", "x*r")])

    w0 = np.asarray(student.initial_weights, np.float64)
    f = lambda theta: _numpy_log_likelihood(theta, data, w0)
    # The numpy model is the library's model: the same likelihood at the fitted rule.
    np.testing.assert_allclose(
        mp.behaviour.choice_log_likelihood(result.model, data).sum(), f(fitted), rtol=1e-10
    )
    reference, grad, hess = _newton_maximum(f, np.zeros(2))
    assert np.max(np.abs(grad)) < 1e-5 and np.all(np.linalg.eigvalsh(hess) < 0)
    np.testing.assert_allclose(fitted, reference, rtol=1e-5, atol=1e-7)
    assert reference[1] > 0.5  # learning from reward has the generating sign


@pytest.mark.slow
def test_recovers_x_times_r():
    # The targets, on the median over 5 seeds.
    res = mp.behaviour.recover_rule(mp.rules.reward_modulated(), seeds=5, key=jr.key(0))
    med = res.median()
    assert med["r2_weights"] > 0.85
    assert med["r2_activity"] > 0.95
    # On the likelihood the fit maximises (marginal over the unobserved input noise).
    assert abs(med["marginal_percent_deviance"] - med["true_marginal_percent_deviance"]) < 2
    median_rule = mp.TaylorRule(np.median(res.fitted.rule.coefficients, axis=0), FACTORS)
    top, value = median_rule.top_terms(1)[0]
    assert top == "x*r" and value > 0


@pytest.mark.slow
def test_adam_fit_lowers_the_choice_loss():
    data = mp.behaviour.recovery_data(
        mp.rules.reward_modulated(),
        seeds=2,
        n_train=4,
        n_test=2,
        task=mp.behaviour.OperantTask(block_lengths=20),
        key=jr.key(0),
    )
    res = mp.behaviour.recover_rule(
        data=data, solver=mp.Optax(optax.adam(3e-3)), steps=30, key=jr.key(1)
    ).fit
    assert res.n_traces <= 1  # traced once, or not at all if an equal fit had compiled it
    assert np.all(res.history.loss[-1] < res.history.loss[0])


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("taylor", marks=pytest.mark.slow),
        "frozen",
        pytest.param("mlp", marks=pytest.mark.slow),
    ],
)
def test_choice_sensitivities_match_forward_mode(kind):
    data = mp.behaviour.PackedChoiceDataset.from_choices(padded_hand_dataset())
    if kind == "mlp":
        rule = mp.MLPRule(FACTORS, width=4, key=jr.key(0))
    else:
        rule = mp.TaylorRule.random(FACTORS, 2, scale=0.2, key=jr.key(1))
        if kind == "frozen":
            rule = rule.with_trainable(rule.mask(["x*r", "y*w", "x^2*y*r^2"]))
    bound = 0.4 if kind == "mlp" else 1.0
    net = network(rule, weight_bound=bound)  # the bound is reached: its derivative counts too
    params, static = eqx.partition(net, mp.rule_filter_spec(net))
    loss = mp.behaviour.ChoiceBCE()
    sensitivities = mp.behaviour.ChoiceSensitivities()
    assert sensitivities.supports(loss, net, data, jacobian=True)
    assert isinstance(mp.Automatic().choose(loss, net, data, jacobian=True), type(sensitivities))

    @eqx.filter_jit
    def both(p):
        ((obs, fast),) = sensitivities.linearise(loss, p, static, data)
        ((_, slow),) = mp.ForwardMode().linearise(loss, p, static, data)
        return obs.predictions, fast, slow

    logits, fast, slow = both(params)
    assert bool(jnp.any(jnp.abs(mp.behaviour.replay(net, data).weights) == bound))
    m = data.presentation_mask
    np.testing.assert_allclose(
        jnp.where(m, logits, 0), jnp.where(m, mp.behaviour.replay(net, data).logits, 0), rtol=1e-6
    )
    scale = float(jnp.max(jnp.abs(slow)))
    np.testing.assert_allclose(
        jnp.where(m[..., None], fast, 0), jnp.where(m[..., None], slow, 0), atol=1e-5 * scale
    )
    if kind == "frozen":
        assert float(jnp.abs(fast).sum(axis=(0, 1)).astype(bool).sum()) == 3


@pytest.mark.parametrize(
    "factors",
    [
        pytest.param(("x", "y", "w", "r"), marks=pytest.mark.slow),
        ("r", "w", "y", "x"),
        pytest.param(("y", "x"), marks=pytest.mark.slow),
    ],
)
def test_taylor_parts(factors):
    from metaplastic.behaviour._sensitivities import _taylor_parts

    rule = mp.TaylorRule.random(factors, 2, scale=0.5, key=jr.key(0))
    x, y = jnp.array([0.7, -0.2]), jnp.array([0.3, -0.5, 0.9])
    w, r = jr.normal(jr.key(1), (3, 2)), jnp.array(0.4)

    @jax.jit
    def check(rule):
        parts = _taylor_parts(rule, x, y, w, r)
        jac = jax.jacfwd(lambda c: mp.TaylorRule(c, factors)(x, y, w, r))(rule.coefficients)
        d_w = jax.jvp(lambda w: rule(x, y, w, r), (w,), (jnp.ones_like(w),))[1]
        d_y = jax.jvp(lambda y: rule(x, y, w, r), (y,), (jnp.ones_like(y),))[1]
        return parts, (rule(x, y, w, r), jnp.moveaxis(jac.reshape(3, 2, -1), -1, 0), d_w, d_y)

    parts, expected = check(rule)
    for name, a, b in zip(["delta", "monomials", "d_w", "d_y"], parts, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


# ------------------------------------------------------- marginal likelihood over input noise
def test_marginal_logits_average_the_probabilities(x64):
    z = jnp.asarray([[-3.0, 0.5, 2.0], [40.0, 45.0, 50.0], [-60.0, -55.0, 1.0]])
    zbar = mp.behaviour.marginal_logits(z, axis=1)
    p = jax.nn.sigmoid(z).mean(axis=1)
    np.testing.assert_allclose(jax.nn.sigmoid(zbar), p, rtol=1e-12)
    # Confident predictions stay finite and keep their confidence: the average of
    # σ(40), σ(45), σ(50) differs from 1 by about e^-40 / 3.
    assert np.isfinite(np.asarray(zbar)).all()
    tail = math.exp(-40) + math.exp(-45) + math.exp(-50)  # Σ σ(−z_k), to first order
    np.testing.assert_allclose(float(zbar[1]), math.log(3.0 / tail), rtol=1e-6)
    # One draw is the identity.
    np.testing.assert_allclose(mp.behaviour.marginal_logits(z[:, :1], axis=1), z[:, 0])


@pytest.fixture(scope="module")
def noisy(generated):
    task, enc, net, g = generated
    return enc, net, g, mp.behaviour.NoisyChoices.from_choices(g.data, enc, 3, key=jr.key(7))


def test_noisy_choices_hold_draws_of_the_encoding(noisy):
    enc, net, g, data = noisy
    assert data.draws == 3 and len(data) == 4
    packed = mp.behaviour.PackedChoiceDataset.from_choices(g.data)
    x = np.asarray(data.packed.inputs)  # (batch, draws, n, n_in)
    assert x.shape[:2] == (4, 3) and x.shape[2:] == packed.inputs.shape[1:]
    np.testing.assert_array_equal(data.choices, packed.choices)
    np.testing.assert_array_equal(data.presentation_mask, packed.presentation_mask)
    m = np.asarray(packed.presentation_mask)
    # Every draw is the odour's mean (0 or 0.75 on each unit) plus noise of the encoding's
    # variance, drawn afresh for each draw.
    valid = x[np.broadcast_to(m[:, None, :], x.shape[:3])]  # (entries, n_in)
    residual = valid - np.where(valid > 0.375, 0.75, 0.0)
    np.testing.assert_allclose(residual.std(), np.sqrt(enc.variance), rtol=0.15)
    between = np.diff(x, axis=1)[np.broadcast_to(m[:, None, :], (4, 2, m.shape[1]))]
    np.testing.assert_allclose(between.std(), np.sqrt(2 * enc.variance), rtol=0.15)
    again = mp.behaviour.NoisyChoices.from_choices(g.data, enc, 3, key=jr.key(7))
    np.testing.assert_array_equal(again.packed.inputs, data.packed.inputs)
    with pytest.raises(mp.MetaplasticError, match="draws must be a positive integer"):
        mp.behaviour.NoisyChoices.from_choices(g.data, enc, 0, key=jr.key(7))
    with pytest.raises(mp.MetaplasticError, match="NoisyChoices"):
        mp.behaviour.replay(net, data)


def test_marginal_likelihood_by_hand(noisy):
    enc, net, g, data = noisy
    # The likelihood averages p(choice) over the draws, each draw a whole replay.
    per_draw = [
        mp.behaviour.replay(net, jax.tree.map(lambda a, k=k: a[:, k], data.packed)).logits
        for k in range(data.draws)
    ]
    p = np.mean([jax.nn.sigmoid(z) for z in per_draw], axis=0)
    c, m = np.asarray(data.choices), np.asarray(data.presentation_mask)
    expected = np.sum(np.where(m, c * np.log(p) + (1 - c) * np.log1p(-p), 0.0), axis=1)
    got = mp.behaviour.choice_log_likelihood(net, data)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # It differs from the average of the per-draw log-likelihoods (Jensen), which is lower.
    per_draw_ll = np.mean(
        [np.sum(np.where(m, mp.losses.bernoulli_log_likelihood(z, c), 0.0), 1) for z in per_draw],
        axis=0,
    )
    assert np.all(expected > per_draw_ll)


@pytest.mark.parametrize("kind", ["taylor", pytest.param("mlp", marks=pytest.mark.slow)])
def test_choice_sensitivities_of_the_marginal_match_forward_mode(noisy, kind):
    enc, net, g, data = noisy
    if kind == "mlp":
        rule = mp.MLPRule(FACTORS, width=4, key=jr.key(0))
    else:
        rule = mp.TaylorRule.random(FACTORS, 2, scale=0.2, key=jr.key(1))
    net = net.with_rule(rule)
    params, static = eqx.partition(net, mp.rule_filter_spec(net))
    loss = mp.behaviour.ChoiceBCE()
    sensitivities = mp.behaviour.ChoiceSensitivities()
    assert isinstance(mp.Automatic().choose(loss, net, data, jacobian=True), type(sensitivities))

    @eqx.filter_jit
    def both(p):
        ((obs, fast),) = sensitivities.linearise(loss, p, static, data)
        ((slow_obs, slow),) = mp.ForwardMode().linearise(loss, p, static, data)
        return obs.predictions, slow_obs.predictions, fast, slow

    logits, slow_logits, fast, slow = both(params)
    m = np.asarray(data.presentation_mask)
    # float32: agreement to rounding of the largest logit.
    size = float(jnp.max(jnp.abs(slow_logits)))
    np.testing.assert_allclose(
        np.where(m, logits, 0), np.where(m, slow_logits, 0), atol=1e-6 * size, rtol=1e-6
    )
    scale = float(jnp.max(jnp.abs(slow)))
    np.testing.assert_allclose(
        np.where(m[..., None], fast, 0), np.where(m[..., None], slow, 0), atol=1e-5 * scale
    )


def test_recovery_data_with_draws_never_uses_the_generating_noise():
    truth = mp.rules.reward_modulated()
    task = mp.behaviour.OperantTask(block_lengths=10)
    kw = dict(seeds=2, n_train=2, n_test=1, task=task, key=jr.key(0))
    plain = mp.behaviour.recovery_data(truth, draws=None, **kw)
    data = mp.behaviour.recovery_data(truth, draws=3, **kw)
    # The same behaviour (choices, rewards) with or without draws.
    np.testing.assert_array_equal(data.test.choices, plain.test.choices)
    np.testing.assert_array_equal(data.train.choices, plain.train.choices)
    assert data.train.packed.inputs.shape[:3] == (2, 2, 3)
    assert data.test_draws.packed.inputs.shape[:3] == (2, 1, 3)
    with pytest.raises(mp.MetaplasticError, match="resample_inputs"):
        mp.behaviour.recovery_data(truth, draws=3, resample_inputs=False, **kw)
    with pytest.raises(mp.MetaplasticError, match="test_draws needs draws"):
        mp.behaviour.recovery_data(truth, draws=None, test_draws=4, **kw)
    more = mp.behaviour.recovery_data(truth, draws=3, test_draws=5, **kw)
    assert more.test_draws.draws == 5
    # The first draws of the held-out noise are the same, whatever their number.
    np.testing.assert_array_equal(
        more.test_draws.packed.inputs[:, :, :3], data.test_draws.packed.inputs
    )
    rec = mp.behaviour.recover_rule(data=data, steps=2, key=jr.key(1))
    assert rec.scores["marginal_percent_deviance"].shape == (2,)
    assert np.isfinite(rec.scores["true_marginal_percent_deviance"]).all()


def _hand_arrays():
    """The arrays of `hand_dataset`, as fresh NumPy copies to mutate."""
    d = hand_dataset(inputs=False)
    return {
        "odours": np.array(d.odours),
        "choices": np.array(d.choices),
        "presentation_mask": np.array(d.presentation_mask),
        "trial_mask": np.array(d.trial_mask),
        "rewards": np.array(d.rewards),
        "expected_rewards": np.array(d.expected_rewards),
    }


def _fractional_choice(a):
    a["choices"][0, 0, 1] = 0.5


def _unknown_odour(a):
    a["odours"][1, 0, 0] = 2


def _two_acceptances(a):
    a["choices"][0, 2, :2] = 1.0  # trial 3 of trajectory 0 has three valid presentations


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_fractional_choice, r"choices must be 0 or 1; found 0.5 at index \(0, 0, 1\)"),
        (_unknown_odour, r"odours must be 0 or 1; found 2 at index \(1, 0, 0\)"),
        (_two_acceptances, r"Trial \(0, 2\) has more than one accepted presentation"),
    ],
)
def test_choice_dataset_refuses_impossible_choices(mutate, message):
    """A choice that is not 0 or 1, an odour that is neither A nor B, and a trial with two
    acceptances (a trial ends at its first acceptance) are refused, naming the entry."""
    arrays = _hand_arrays()
    mp.behaviour.ChoiceDataset(**arrays)  # the unmutated arrays are accepted
    mutate(arrays)
    with pytest.raises(mp.MetaplasticError, match=message):
        mp.behaviour.ChoiceDataset(**arrays)
