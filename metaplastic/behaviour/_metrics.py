"""Choice objectives with neural recordings, and the metrics of a fitted network: percent
deviance against the no-plasticity null, and R² of weights and activity against a reference."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..metrics import percent_deviance_explained, r2_score
from ..rules import FACTORS, TaylorRule
from ._data import ChoiceDataset, NoisyChoices, PackedChoiceDataset
from ._network import MushroomBody
from ._replay import choice_log_likelihood, replay, summed_log_likelihood


def null_network(network: MushroomBody) -> MushroomBody:
    """The null model: the same network without plasticity (θ = 0)."""
    return network.with_rule(TaylorRule.zeros(FACTORS, order=0))


@eqx.filter_jit
def percent_deviance(
    network: MushroomBody,
    data: ChoiceDataset | PackedChoiceDataset,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
) -> Float[Array, " batch"]:
    """Percent deviance explained per trajectory, `100 · (D_null − D) / D_null` with
    `D = −2 Σ log p(observed choice)` over valid presentations and the null model the same
    network with θ = 0."""
    ll = choice_log_likelihood(network, data, initial_weights)
    ll_null = choice_log_likelihood(null_network(network), data, initial_weights)
    return percent_deviance_explained(ll, ll_null)


def _scores(reference, fitted, data, initial_weights, draws):
    a = replay(reference, data, initial_weights)
    b = replay(fitted, data, initial_weights)
    pm = data.presentation_mask
    r2w = jax.vmap(r2_score)(
        a.weights, b.weights, jnp.broadcast_to(data.trial_mask[:, :, None, None], a.weights.shape)
    )
    r2a = jax.vmap(r2_score)(a.hidden, b.hidden, jnp.broadcast_to(pm[..., None], a.hidden.shape))

    loglik = lambda logits: summed_log_likelihood(
        logits, data.choices, pm, tuple(range(1, pm.ndim))
    )

    null = replay(null_network(reference), data, initial_weights)
    ll_null = loglik(null.logits)
    out = {
        "r2_weights": r2w,
        "r2_activity": r2a,
        "percent_deviance": percent_deviance_explained(loglik(b.logits), ll_null),
        "true_percent_deviance": percent_deviance_explained(loglik(a.logits), ll_null),
    }
    if draws is not None:
        marginal = lambda net: choice_log_likelihood(net, draws, initial_weights)
        m_null = marginal(null_network(reference))
        out["marginal_percent_deviance"] = percent_deviance_explained(marginal(fitted), m_null)
        out["true_marginal_percent_deviance"] = percent_deviance_explained(
            marginal(reference), m_null
        )
    return out


def compare_behaviour(
    reference: MushroomBody,
    fitted: MushroomBody,
    data: ChoiceDataset,
    initial_weights: Float[Array, "batch hidden n_in"] | None = None,
    *,
    draws: NoisyChoices | None = None,
    ensemble: bool = False,
    data_ensemble_axis: int | None = 0,
) -> dict[str, np.ndarray]:
    """Score a fitted network against the true one on (held-out) recorded behaviour.

    Both networks are teacher-forced on the same data from the same initial weights (default
    `fitted.initial_weights`; the null model of the deviance is the network with θ = 0).

    **Arguments:**

    - `reference`: the ground-truth network.
    - `fitted`: the fitted network; with `ensemble=True`, its rule arrays have a leading
      member axis (as returned by `fit(..., ensemble=True)`).
    - `data`: held-out `ChoiceDataset` with inputs (with a leading member axis at
      `data_ensemble_axis` if `ensemble` and that is not `None`).
    - `initial_weights`: optional per-trajectory starting weights `(batch, hidden, n_in)`.
    - `draws`: optionally the same trajectories as `NoisyChoices` (with the same member axis
      as `data`), to score the marginal likelihood over the unobserved input noise too.

    **Returns:**

    A dict of numpy arrays of shape `(batch,)` (or `(members, batch)` with `ensemble`):
    `r2_weights` and `r2_activity` (fitted vs true, the weight trajectories over valid trials
    and the plastic layer's activity over valid presentations), `percent_deviance` of the
    fitted network and `true_percent_deviance` of the reference; with `draws`, also
    `marginal_percent_deviance` and `true_marginal_percent_deviance` (the same on the
    likelihood averaged over the draws).
    """
    if initial_weights is None:
        w0 = fitted.initial_weights
        batch = data.odours.shape[-3]
        initial_weights = jnp.broadcast_to(w0, (batch,) + w0.shape[-2:])
    out = _compare(reference, fitted, data, initial_weights, draws, ensemble, data_ensemble_axis)
    return {k: np.asarray(v) for k, v in out.items()}


@eqx.filter_jit
def _compare(reference, fitted, data, initial_weights, draws, ensemble, data_ensemble_axis):
    if not ensemble:
        return _scores(reference, fitted, data, initial_weights, draws)
    # Only the rule carries the member axis; the rest of the network is shared.
    rule_params, rule_static = eqx.partition(fitted.rule, eqx.is_array)
    return jax.vmap(
        lambda p, d, n: _scores(
            reference, fitted.with_rule(eqx.combine(p, rule_static)), d, initial_weights, n
        ),
        in_axes=(0, data_ensemble_axis, data_ensemble_axis),
    )(rule_params, data, draws)
