"""Readout heads: observation models that turn a network's outputs into predictions of what
was recorded, with the likelihood that scores them, and draw synthetic recordings."""

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float

from .._errors import MetaplasticError, validates_input
from .._likelihood import AbstractLikelihood, Bernoulli, Poisson, SquaredError
from .._types import Key
from .._validate import is_size
from ._layer import AbstractLayer


class AbstractHead(eqx.Module):
    """An observation model: how a network's outputs were recorded.

    `predict` maps one trajectory of outputs `(time, n)` to the predictions that the head's
    `likelihood` scores against the recordings `(time, n)` (the activity itself, the log of
    the expected spike count, a fluorescence trace, the logit of a choice). `sample` draws a
    synthetic recording from those predictions, and `check_recordings` refuses recordings the
    head cannot have produced. A head's arrays (gains, offsets) are parameters like any
    other: not trained by default, selectable by the fit's filter spec.

    A new head is one subclass: its `likelihood` (a class variable), `n_neurons`, and the
    three methods. `metaplastic.losses.RecordingLoss` then fits it, and every solver,
    `laplace`, `bootstrap`, `compare_models` and `threshold_fit` work on it unchanged.
    """

    likelihood: eqx.AbstractClassVar[AbstractLikelihood]
    n_neurons: eqx.AbstractVar[int | None]

    @abc.abstractmethod
    def predict(self, activity: Float[Array, "time n"]) -> Float[Array, "time n"]:
        """The predictions of one trajectory's recordings from the network's outputs."""
        raise NotImplementedError

    @abc.abstractmethod
    def sample(self, predictions: Float[Array, "time n"], *, key: Key) -> Float[Array, "time n"]:
        """A synthetic recording drawn from `predictions` (shaped like them)."""
        raise NotImplementedError

    @abc.abstractmethod
    def check_recordings(self, recordings: np.ndarray, valid: np.ndarray) -> None:
        """Raise a `MetaplasticError` naming the first entry, among those `valid` marks,
        that this head cannot have recorded (non-finite values are refused before)."""
        raise NotImplementedError


def _check_neurons(n_neurons: object) -> int | None:
    if n_neurons is not None and not is_size(n_neurons):
        raise MetaplasticError(f"n_neurons must be a positive integer or None, got {n_neurons!r}.")
    return None if n_neurons is None else int(n_neurons)


def _number(name: str, value: object) -> Array:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number, jax.Array)):
        raise MetaplasticError(f"{name} must be a number, got {value!r}.")
    if isinstance(value, jax.Array) and value.shape != ():
        raise MetaplasticError(f"{name} must be a scalar, got shape {value.shape}.")
    if not isinstance(value, jax.core.Tracer):
        if not math.isfinite(float(value)):
            raise MetaplasticError(f"{name} must be finite, got {float(value)}.")
    return jnp.asarray(value, jnp.result_type(float))


def _noise_std(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise MetaplasticError(f"noise_std must be a number, got {value!r}.")
    if not (math.isfinite(value) and value >= 0):
        raise MetaplasticError(f"noise_std must be finite and non-negative, got {value}.")
    return float(value)


def _first_bad(name: str, bad: np.ndarray, recordings: np.ndarray, why: str) -> None:
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MetaplasticError(
            f"{name} must be {why}; the value at (trajectory, step, neuron) {where} is "
            f"{recordings[where]} ({int(bad.sum())} such value(s) in all)."
        )


class GaussianHead(AbstractHead):
    """Activity recorded directly, with additive Gaussian noise of standard deviation
    `noise_std`: the prediction is the activity, scored by squared error (the noise level is
    estimated from the residuals)."""

    n_neurons: int | None = eqx.field(static=True)
    noise_std: float = eqx.field(static=True)
    likelihood: ClassVar[AbstractLikelihood] = SquaredError()

    @validates_input
    def __init__(self, n_neurons: int | None = None, *, noise_std: float = 0.0):
        self.n_neurons = _check_neurons(n_neurons)
        self.noise_std = _noise_std(noise_std)

    def predict(self, activity):
        return activity

    def sample(self, predictions, *, key):
        noise = jr.normal(key, predictions.shape, predictions.dtype)
        return predictions + self.noise_std * noise

    def check_recordings(self, recordings, valid):
        """Any finite value can be recorded."""


class AbstractLinearHead(AbstractHead):
    """A head whose prediction is an affine function of the activity, `gain · a + offset`
    (the natural parameter of its likelihood: a log expected count, a logit). Subclasses set
    the `likelihood` and implement `sample` and `check_recordings`."""

    gain: Float[Array, ""]
    offset: Float[Array, ""]
    n_neurons: int | None = eqx.field(static=True)

    @validates_input
    def __init__(self, n_neurons: int | None = None, *, gain: float = 1.0, offset: float = 0.0):
        """**Arguments:**

        - `n_neurons`: the number of neurons (checked against the network's outputs).
        - `gain`, `offset`: the prediction is `gain · a + offset` of the activity `a`.
        """
        self.n_neurons = _check_neurons(n_neurons)
        self.gain = _number("gain", gain)
        self.offset = _number("offset", offset)

    def predict(self, activity):
        return self.gain * activity + self.offset


class PoissonHead(AbstractLinearHead):
    """Spike counts per time bin, Poisson with an expected count `λ = exp(gain · a + offset)`
    of the activity `a` (the exponential link, always positive): the prediction is
    `log λ = gain · a + offset`, scored by the exact Poisson negative log-likelihood. E.g.
    `offset = log(rate · bin)` for a baseline rate."""

    likelihood: ClassVar[AbstractLikelihood] = Poisson()

    def sample(self, predictions, *, key):
        return jr.poisson(key, jnp.exp(predictions)).astype(predictions.dtype)

    def check_recordings(self, recordings, valid):
        """Spike counts: non-negative integers."""
        bad = valid & ((recordings < 0) | (recordings != np.round(recordings)))
        _first_bad("spike counts", bad, recordings, "non-negative integers")


class CalciumHead(AbstractHead):
    """Calcium fluorescence: an indicator integrates the activity `a` with decay `γ` per step
    and the fluorescence reads it linearly, with Gaussian noise:

        c_t = γ c_{t−1} + a_t  (c_{−1} = 0),   F_t = α c_t + β + noise.

    The prediction is `α c_t + β`, scored by squared error (the noise level is estimated from
    the residuals)."""

    decay: Float[Array, ""]
    scale: Float[Array, ""]
    offset: Float[Array, ""]
    n_neurons: int | None = eqx.field(static=True)
    noise_std: float = eqx.field(static=True)
    likelihood: ClassVar[AbstractLikelihood] = SquaredError()

    @validates_input
    def __init__(
        self,
        n_neurons: int | None = None,
        *,
        decay: float = 0.8,
        scale: float = 1.0,
        offset: float = 0.0,
        noise_std: float = 0.0,
    ):
        """**Arguments:**

        - `n_neurons`: the number of neurons (checked against the network's outputs).
        - `decay`: `γ` in [0, 1), the fraction of the indicator left after one step.
        - `scale`, `offset`: `α` (non-zero) and `β` of the fluorescence.
        - `noise_std`: the standard deviation of the noise drawn by `sample`.
        """
        self.n_neurons = _check_neurons(n_neurons)
        self.decay = _number("decay", decay)
        if not isinstance(decay, jax.core.Tracer) and not 0 <= float(decay) < 1:
            raise MetaplasticError(f"decay must be in [0, 1), got {decay}.")
        self.scale = _number("scale", scale)
        if not isinstance(scale, jax.core.Tracer) and float(scale) == 0:
            raise MetaplasticError("scale must be non-zero: a zero scale records nothing.")
        self.offset = _number("offset", offset)
        self.noise_std = _noise_std(noise_std)

    def predict(self, activity):
        # The indicator is a causal linear filter: c = K a with K[t, s] = γ^(t−s) for s <= t,
        # one (time × time) product instead of a second scan.
        t = jnp.arange(activity.shape[0])
        lag = t[:, None] - t[None, :]
        kernel = jnp.where(lag >= 0, self.decay ** jnp.maximum(lag, 0), 0.0)
        calcium = kernel.astype(activity.dtype) @ activity
        return self.scale * calcium + self.offset

    def sample(self, predictions, *, key):
        noise = jr.normal(key, predictions.shape, predictions.dtype)
        return predictions + self.noise_std * noise

    def check_recordings(self, recordings, valid):
        """Any finite fluorescence can be recorded."""


class BernoulliHead(AbstractLinearHead):
    """Binary observations (a choice, a detected event) per step and neuron, with
    `p(1) = sigmoid(gain · a + offset)`: the prediction is the logit."""

    likelihood: ClassVar[AbstractLikelihood] = Bernoulli()

    def sample(self, predictions, *, key):
        return jr.bernoulli(key, jax.nn.sigmoid(predictions)).astype(predictions.dtype)

    def check_recordings(self, recordings, valid):
        """Binary observations: 0 or 1."""
        bad = valid & (recordings != 0) & (recordings != 1)
        _first_bad("binary observations", bad, recordings, "0 or 1")


class Model(eqx.Module):
    """A network and the head through which it was recorded: what `metaplastic.fit` fits
    with `metaplastic.losses.RecordingLoss` to a `metaplastic.data.RecordingDataset`."""

    network: AbstractLayer
    head: AbstractHead

    def __check_init__(self):
        if not isinstance(self.network, AbstractLayer):
            raise MetaplasticError(
                f"network must be a layer (an AbstractLayer such as "
                f"metaplastic.nn.PlasticDense or a Chain), got {type(self.network).__name__}."
            )
        if not isinstance(self.head, AbstractHead):
            raise MetaplasticError(
                f"head must be a readout head (an AbstractHead such as "
                f"metaplastic.nn.PoissonHead()), got {type(self.head).__name__}."
            )
        n, m = self.head.n_neurons, self.network.out_size
        if n is not None and m is not None and n != m:
            raise MetaplasticError(
                f"{type(self.head).__name__} records {n} neurons but the network "
                f"({type(self.network).__name__}) has {m} outputs."
            )
