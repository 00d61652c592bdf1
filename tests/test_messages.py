"""The common first-hour mistakes each get a message that names what is wrong and the fix."""

import warnings

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import metaplastic as mp


def activity(n_traj=4, rewards=None):
    # Random numbers of the right shapes: every mistake below is refused (or warned about)
    # before anything is simulated or compiled.
    rng = np.random.default_rng(0)
    return mp.data.ActivityDataset(
        rng.normal(size=(n_traj, 5, 3)),
        rng.random(size=(n_traj, 5, 4)),
        0.01 * rng.normal(size=(n_traj, 4, 3)),
        rewards=rewards,
    )


def student(factors=("x", "y", "w")):
    return mp.nn.PlasticDense(mp.TaylorRule.random(factors, key=jr.key(3)), eta=1.0)


def test_a_loss_class_instead_of_an_instance():
    with pytest.raises(mp.MetaplasticError, match=r"class ActivityMSE.*loss=ActivityMSE\(\)"):
        mp.fit(student(), activity(), mp.losses.ActivityMSE, steps=1, progress=False)


def test_a_penalty_passed_as_the_loss():
    with pytest.raises(mp.MetaplasticError, match=r"penalty L1.*pass it as penalty="):
        mp.fit(student(), activity(), mp.losses.L1(1e-3), steps=1, progress=False)


def test_a_choice_loss_on_activity_names_the_activity_loss():
    with pytest.raises(mp.MetaplasticError, match=r"ChoiceBCE fits recorded choices.*ActivityMSE"):
        mp.fit(student(), activity(), mp.behaviour.ChoiceBCE(), steps=1, progress=False)


def test_an_activity_loss_on_choices_names_the_choice_loss():
    flies = mp.behaviour.ChoiceDataset(
        np.zeros((1, 2, 1), int),
        np.zeros((1, 2, 1)),
        np.ones((1, 2, 1), bool),
        np.ones((1, 2), bool),
        np.zeros((1, 2)),
        np.zeros((1, 2)),
    )
    with pytest.raises(mp.MetaplasticError, match=r"ActivityMSE fits .*ChoiceBCE\(\)"):
        mp.fit(student(), flies, mp.losses.ActivityMSE(), steps=1, progress=False)


def test_an_unrelated_failure_gets_no_shape_hint():
    def broken(model, batch):
        raise KeyError("no such column")

    with pytest.raises(mp.MetaplasticError) as info:
        mp.fit(student(), activity(), broken, steps=1, progress=False)
    assert "shapes" not in str(info.value) and "no such column" in str(info.value)


def test_ensemble_with_an_unstacked_model_says_to_stack_it():
    # Three trajectories: as many as the coefficients' first axis, which once passed as a
    # member axis.
    with pytest.raises(mp.MetaplasticError, match=r"no member axis.*stack_models"):
        mp.fit(student(), activity(3), mp.losses.ActivityMSE(), ensemble=True, progress=False)


def test_stack_models_stacks_the_trainable_arrays_and_shares_the_rest():
    a, b = student(), mp.nn.PlasticDense(mp.TaylorRule.random(key=jr.key(9)), eta=1.0)
    both = mp.stack_models([a, b])
    assert both.rule.coefficients.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(both.rule.coefficients[1], b.rule.coefficients)
    assert both.eta == a.eta
    # An array that does not train is shared, unless per_member gives each member its own.
    one = {"rule": a.rule, "gain": jnp.asarray(1.0)}
    two = {"rule": b.rule, "gain": jnp.asarray(2.0)}
    with pytest.raises(mp.MetaplasticError, match=r"\['gain'\] differs .* per_member"):
        mp.stack_models([one, two])
    own = mp.stack_models([one, two], per_member=lambda m: m["gain"])
    np.testing.assert_array_equal(own["gain"], [1.0, 2.0])
    assert own["rule"].coefficients.shape == (2, 3, 3, 3)
    with pytest.raises(mp.MetaplasticError, match="structure or its hyper-parameters"):
        mp.stack_models([a, student(("x", "y"))])


def test_fit_inside_jit_says_to_call_it_outside():
    data = activity()
    fit = lambda d: mp.fit(student(), d, mp.losses.ActivityMSE(), steps=1, progress=False)
    with pytest.raises(mp.MetaplasticError, match=r"inside a JAX transformation.*outside jit"):
        jax.jit(lambda d: fit(d).model.rule.coefficients)(data)


def test_ragged_trajectories_name_their_lengths_and_the_fix():
    x = [np.zeros((5, 3)), np.zeros((6, 3))]
    y = [np.zeros((5, 4)), np.zeros((6, 4))]
    with pytest.raises(mp.MetaplasticError, match=r"different lengths \[5, 6\].*from_table"):
        mp.data.ActivityDataset(x, y, np.zeros((2, 4, 3)))
    with pytest.raises(mp.MetaplasticError, match=r"odours .*different lengths \[3, 2\]"):
        mp.behaviour.ChoiceDataset([[0, 1, 0], [1, 0]], [[1, 0, 1], [0, 1]], *([None] * 4))


def test_a_rule_over_r_on_activity_without_rewards_warns():
    def stop(model, batch):  # refuses at once: the warning comes before anything runs
        raise KeyError("stop")

    over_r = student(("x", "y", "w", "r"))
    with pytest.warns(UserWarning, match=r"factor r .*rewards is all zero.*rewards="):
        with pytest.raises(mp.MetaplasticError, match="stop"):
            mp.fit(over_r, activity(), stop, steps=1, progress=False)
    # With rewards, or with a rule without r, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model, data in [(over_r, activity(rewards=np.ones((4, 5)))), (student(), activity())]:
            with pytest.raises(mp.MetaplasticError, match="stop"):
                mp.fit(model, data, stop, steps=1, progress=False)
