"""A hand-written reverse pass through the scanned simulation of a Taylor-rule layer.

`jax.grad` through `jax.lax.scan` stores every intermediate of every step and replays them in
a generic reverse scan; for a plastic layer that is several weight-sized arrays per step, and
the reverse pass, not the forward one, dominates the time of a fit. A Taylor rule is linear in
its coefficients θ, so the gradient with respect to θ is a sum over time of small contractions
of the adjoint `Λ_{t+1} = ∂L/∂W_{t+1}` with the factorised monomials:

    ∂L/∂θ[a, b, c, d] = η Σ_t m_t r_t^d Σ_i y_ti^b Σ_j Λ_{t+1,ij} W_{t,ij}^c x_tj^a,

and the adjoint itself obeys the elementwise recursion

    Λ_t = Λ_{t+1} + η m_t Λ_{t+1} ⊙ ∂g/∂W + (f'(u_t) ⊙ ȳ_t) ⊗ x_t,
    ȳ_t = ∂L/∂y_t + η m_t Σ_j Λ_{t+1,ij} ∂g_ij/∂y_i,

where `m_t` is the step mask. Both need only `Q_t[c, i, a] = Σ_j Λ_{t+1,ij} W_{t,ij}^c x_tj^a`,
one matrix product per step. The backward pass below keeps one weight matrix per step (or one
per checkpointed segment, recomputing inside it) and nothing else.

Two entry points share it:

- `taylor_activity_mse`: the masked mean squared error of a dataset, as one custom-VJP
  function. Its forward rule runs the forward *and* backward pass of one trajectory at a time
  on a CPU, so the stored weights of only one trajectory are alive at once (on an accelerator,
  of a chunk of trajectories vmapped together: `ACCELERATOR_STORE_BYTES`).
- `taylor_simulate`: one trajectory's activity and final weights, with the reverse pass as a
  custom VJP, for any loss on the activity.

Both are reverse-mode only (`jax.grad`, `jax.vjp`) and are reached through the `TaylorReverse`
differentiation strategy; forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) uses the plain
simulation (`mp.simulate`).
"""

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Bool, Float

from ._errors import MetaplasticError
from .nn import ACTIVATIONS, PlasticDense
from .rules import FACTORS, TaylorRule, powers


# Activations applied elementwise; the backward pass takes f'(u) from a jvp with a ones
# tangent, which is only the derivative for elementwise functions.
_ELEMENTWISE = frozenset({"sigmoid", "tanh", "identity", "relu", "softplus", "exp"})
_LAYER_FIELDS = frozenset({"rule", "eta", "activation", "in_size", "out_size"})
_RULE_FIELDS = frozenset({"coefficients", "trainable", "factors", "order"})

# Without an explicit `checkpoint`, the backward pass keeps every step's weights while they
# take at most this many bytes per trajectory, and otherwise one matrix per segment of about
# √T steps, recomputing the weights inside a segment.
STORE_BUDGET_BYTES = 128 * 2**20
# Trajectories processed together (vmapped) inside the loss on a CPU, where one trajectory's
# weight-sized loops already use every core and a larger chunk only adds memory.
CHUNK = 1
# On an accelerator, one trajectory's small kernels leave the device idle: trajectories are
# vmapped together, as many as keep their stored weights under this many bytes.
ACCELERATOR_STORE_BYTES = 2 * 2**30


class _Config(NamedTuple):
    activation: str
    segment: int  # steps per stored weight matrix (1: every step's weights are stored)
    chunk: int


def supports_fast_gradient(layer) -> bool:
    """Whether `layer` is a `PlasticDense` with a `TaylorRule` and an elementwise activation,
    the case the hand-written reverse pass covers exactly."""
    return (
        type(layer) is PlasticDense
        and {f.name for f in dataclasses.fields(layer)} == _LAYER_FIELDS
        and type(layer.rule) is TaylorRule
        and {f.name for f in dataclasses.fields(layer.rule)} == _RULE_FIELDS
        and layer.activation in _ELEMENTWISE
        and layer.activation in ACTIVATIONS
    )


def canonical_coefficients(rule: TaylorRule) -> Float[Array, "nx ny nw nr"]:
    """The rule's effective coefficients with axes in canonical (x, y, w, r) order, absent
    factors as size-1 axes (differentiable: plain transposes and reshapes)."""
    c = rule.effective_coefficients
    present = [f for f in FACTORS if f in rule.factors]
    c = jnp.transpose(c, [rule.factors.index(f) for f in present])
    return jnp.reshape(c, [rule.order + 1 if f in rule.factors else 1 for f in FACTORS])


def _config(activation: str, checkpoint, length: int, matrix_bytes: int) -> _Config:
    """How the backward pass stores weights for a trajectory of `length` steps. `checkpoint`
    as in `metaplastic.simulate`: `True` keeps every step's weights, an integer `k` one matrix
    per `k` steps (recomputing inside), `False` every step's weights up to
    `STORE_BUDGET_BYTES` per trajectory and √T-step segments beyond."""
    if checkpoint is True:
        segment = 1  # what per-step checkpointing keeps: every step's weights
    elif checkpoint is False or checkpoint is None:
        segment = 1
        if length * matrix_bytes > STORE_BUDGET_BYTES:
            segment = math.isqrt(length - 1) + 1
    else:
        segment = int(checkpoint)
        if segment < 1:
            raise MetaplasticError(f"checkpoint segment length must be >= 1, got {checkpoint}.")
        segment = min(segment, length)
    chunk = CHUNK
    if jax.default_backend() != "cpu":
        stored = (-(-length // segment) + segment) * matrix_bytes
        chunk = max(1, ACCELERATOR_STORE_BYTES // stored)
    return _Config(activation, segment, chunk)


# ---------------------------------------------------------------------------- one step
#
# XLA on CPU fuses cheap elementwise producers into the (n_out, n_in) loops that consume them,
# recomputing a per-neuron or per-input quantity for every synapse, and a loop that slices a
# small stacked array inside it loses its vectorisation. So the per-step inputs of the weight-
# sized loops come out of matrix products (which XLA materialises): θ contracted with the
# powers of x by `tensordot`, the adjoint contractions by one product per step.


def _reward_contracted(c4, rewards):
    """θ contracted with the powers of r at every step, `(T, nx, ny, nw)`."""
    rp = jnp.stack(powers(rewards, c4.shape[3]), axis=-1)  # (T, nr)
    return jnp.einsum("abcd,td->tabc", c4, rp)


def _horner(coefficients, v):
    """`Σ_k coefficients[k] · v^k` by Horner's scheme."""
    out = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        out = out * v + c
    return out


def _rule(a, y, weight):
    """`g_ij = Σ_b y_i^b Σ_c a[b, c, j] W_ij^c`: Horner in W for each power of y, then in y
    (about `ny · nw` multiply-adds per synapse)."""
    ny, nw = a.shape[:2]
    per_b = [_horner([a[b, c][None, :] for c in range(nw)], weight) for b in range(ny)]
    return _horner(per_b, y[:, None])


def _rule_dw(a, y, weight):
    """`∂g/∂W`, or `None` without a w factor."""
    ny, nw = a.shape[:2]
    if nw == 1:
        return None
    per_b = [_horner([c * a[b, c][None, :] for c in range(1, nw)], weight) for b in range(ny)]
    return _horner(per_b, y[:, None])


def _a(c3, x):
    """`a[b, c, j] = Σ_a θ_r[a, b, c] x_j^a`, `(ny, nw, n_in)`, by a matrix product."""
    return jnp.tensordot(c3, jnp.stack(powers(x, c3.shape[0])), axes=[[0], [0]])


def _forward_step(cfg, eta, weight, x, c3, valid):
    u = weight @ x
    y = ACTIVATIONS[cfg.activation](u)
    new = jnp.where(valid, weight + eta * _rule(_a(c3, x), y, weight), weight)
    return new, u


def _scan_forward(cfg, eta, w0, inputs, c3, mask):
    """The plain forward pass (no derivative): final weights and pre-activations."""

    def body(w, xs):
        return _forward_step(cfg, eta, w, *xs)

    return jax.lax.scan(body, w0, (inputs, c3, mask))


def _backward_step(cfg, need_x, eta, lam, weight, x, c3, valid, y, dy, ybar):
    """One step of the reverse pass, from `Λ_{t+1}` to `Λ_t`, given `y = f(u)` and
    `dy = f'(u)`. Also returns `Q[c, i, a] = Σ_j Λ_{t+1,ij} W_{t,ij}^c x_j^a`, from which the
    θ and reward cotangents are contracted after the scan, and the input cotangent if asked."""
    nx, ny, nw = c3.shape
    n_out = weight.shape[0]
    xp = jnp.stack(powers(x, nx))  # (nx, n_in)
    p = [lam]
    for _ in range(1, nw):
        p.append(p[-1] * weight)
    # One product for all powers of W: (nw·n_out, n_in) @ (n_in, nx).
    q = (jnp.concatenate(p) if nw > 1 else lam) @ xp.T
    q = q.reshape(nw, n_out, nx)
    if ny > 1:
        # ∂/∂y_i of Σ_j Λ_ij g_ij = Σ_b b y_i^{b-1} Σ_{a,c} θ_r[a, b, c] Q[c, i, a].
        g = jnp.einsum("cia,abc->ib", q, c3[:, 1:])  # (n_out, ny - 1)
        gy = _horner([b * g[:, b - 1] for b in range(1, ny)], y)
        ybar = ybar + jnp.where(valid, eta * gy, 0.0)
    du = ybar * dy
    new_lam = lam + du[:, None] * x[None, :]
    a = _a(c3, x)
    d = _rule_dw(a, y, weight)
    if d is not None:
        new_lam = new_lam + jnp.where(valid, eta * lam * d, 0.0)
    xbar = None
    if need_x:
        xbar = weight.T @ du
        if nx > 1:
            ys = jnp.stack(powers(y, ny))
            rmat = jnp.stack([ys @ pc for pc in p])  # (nw, ny, n_in): Σ_i y^b Λ W^c
            dxp = jnp.stack([k * xp[k - 1] for k in range(1, nx)])  # ∂x^a/∂x, a >= 1
            dgx = jnp.einsum("abc,aj,cbj->j", c3[1:], dxp, rmat)
            xbar = xbar + jnp.where(valid, eta * dgx, 0.0)
    return new_lam, q, xbar


# ---------------------------------------------------------------------------- one trajectory


def _recompute_step(eta, weight, x, c3, valid, y):
    """A forward step that takes the activity from the forward pass (no matrix product)."""
    return jnp.where(valid, weight + eta * _rule(_a(c3, x), y, weight), weight)


def _pad_split(v, n_seg: int, segment: int):
    pad = n_seg * segment - v.shape[0]
    if pad:
        v = jnp.concatenate([v, jnp.zeros((pad,) + v.shape[1:], v.dtype)])
    return v.reshape((n_seg, segment) + v.shape[1:])


def _forward(cfg, c4, eta, w0, inputs, rewards, mask):
    """The forward pass of one trajectory: final weights, pre-activations `u`, and the stored
    weights (every step's, or each segment's first)."""
    length = inputs.shape[0]
    c3 = _reward_contracted(c4, rewards)
    if cfg.segment == 1:

        def body(w, xs):
            new, u = _forward_step(cfg, eta, w, *xs)
            return new, (u, w)

        final, (u, stored) = jax.lax.scan(body, w0, (inputs, c3, mask))
        return final, u, stored
    n_seg = -(-length // cfg.segment)
    xs = tuple(_pad_split(v, n_seg, cfg.segment) for v in (inputs, c3, mask))

    def segment(w, seg):
        new, u = _scan_forward(cfg, eta, w, *seg)
        return new, (u, w)

    final, (u, stored) = jax.lax.scan(segment, w0, xs)
    return final, u.reshape((-1,) + u.shape[2:])[:length], stored


def _scan_backward(cfg, need_x, eta, lam, ws, xs):
    """The reverse pass over the steps whose weights are `ws`. The weights of the next step
    (backwards) are fetched into the carry, so that the weight-sized loops read a plain array
    rather than a slice of the stack (which XLA's CPU loops handle far more slowly)."""
    length = ws.shape[0]

    def body(carry, step):
        lam, w, t = carry
        w_next = jax.lax.dynamic_index_in_dim(ws, jnp.maximum(t - 1, 0), keepdims=False)
        x, c3, m, y, dy, yb = step
        lam, q, xbar = _backward_step(cfg, need_x, eta, lam, w, x, c3, m, y, dy, yb)
        return (lam, w_next, t - 1), (q, xbar)

    (lam, _, _), (q, xbar) = jax.lax.scan(body, (lam, ws[-1], length - 1), xs, reverse=True)
    y, ny = xs[3], xs[1].shape[2]
    ys = jnp.stack(powers(y, ny), axis=1)  # (T, ny, n_out)
    s = jnp.einsum("tbi,tcia->tabc", ys, q)  # Σ_i y^b Λ W^c x^a, per step
    return lam, s, xbar


def _backward(cfg, need_x, need_r, c4, eta, stored, inputs, rewards, mask, u, ybar, lam):
    """The reverse pass of one trajectory from `Λ_T = lam`: returns `Λ_0`, `H` (so that
    `∂L/∂θ = η H`), and the input and reward cotangents (or `None`)."""
    length = inputs.shape[0]
    nr = c4.shape[3]
    y, dy = jax.jvp(ACTIVATIONS[cfg.activation], (u,), (jnp.ones_like(u),))
    xs = (inputs, _reward_contracted(c4, rewards), mask, y, dy, ybar)
    if cfg.segment == 1:
        lam, s, xbar = _scan_backward(cfg, need_x, eta, lam, stored, xs)
    else:
        n_seg = stored.shape[0]
        xs = tuple(_pad_split(v, n_seg, cfg.segment) for v in xs)

        def segment(lam, seg):
            w_start, (x, c3, m, yy, *rest) = seg

            # Recompute the weights inside the segment from its stored start.
            def recompute(w, step):
                return _recompute_step(eta, w, *step), w

            _, ws = jax.lax.scan(recompute, w_start, (x, c3, m, yy))
            lam, s, xbar = _scan_backward(cfg, need_x, eta, lam, ws, (x, c3, m, yy, *rest))
            return lam, (s, xbar)

        lam, (s, xbar) = jax.lax.scan(segment, lam, (stored, xs), reverse=True)
        s, xbar = jax.tree.map(lambda v: v.reshape((-1,) + v.shape[2:])[:length], (s, xbar))
    vf = mask.astype(s.dtype)
    rp = jnp.stack(powers(rewards, nr), axis=-1)  # (T, nr)
    h = jnp.einsum("t,td,tabc->abcd", vf, rp, s)
    rbar = None
    if need_r:
        if nr > 1:
            drp = jnp.stack(
                [jnp.zeros_like(rewards)] + [d * rp[:, d - 1] for d in range(1, nr)], axis=-1
            )
            rbar = eta * vf * jnp.einsum("abcd,tabc,td->t", c4, s, drp)
        else:
            rbar = jnp.zeros_like(rewards)
    return lam, h, xbar, rbar


# ---------------------------------------------------------------------------- the MSE loss


def _common_dtype(*arrays):
    return jnp.result_type(*[a.dtype for a in arrays])


def _mse_primal(cfg, c4, eta, w0, inputs, rewards, step_mask, neuron_mask, target):
    def one(w, x, r, m):
        return _scan_forward(cfg, eta, w, x, _reward_contracted(c4, r), m)[1]

    u = jax.vmap(one)(w0, inputs, rewards, step_mask)
    valid = step_mask[:, :, None] & neuron_mask[:, None, :]
    diff = jnp.where(valid, ACTIVATIONS[cfg.activation](u) - target, 0.0)
    return jnp.sum(diff**2) / jnp.maximum(jnp.sum(valid), 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mse(cfg, c4, eta, w0, inputs, rewards, step_mask, neuron_mask, target):
    return _mse_primal(cfg, c4, eta, w0, inputs, rewards, step_mask, neuron_mask, target)


def _mse_fwd(cfg, c4, eta, w0, inputs, rewards, step_mask, neuron_mask, target):
    need_w0, need_x, need_r, need_t = (v.perturbed for v in (w0, inputs, rewards, target))
    c4, eta, w0, inputs, rewards, step_mask, neuron_mask, target = (
        v.value for v in (c4, eta, w0, inputs, rewards, step_mask, neuron_mask, target)
    )
    count = jnp.maximum(jnp.sum(step_mask[:, :, None] & neuron_mask[:, None, :]), 1)
    count = count.astype(c4.dtype)

    def one(traj):
        w, x, r, m, nm, tgt = traj
        _, u, stored = _forward(cfg, c4, eta, w, x, r, m)
        valid = m[:, None] & nm[None, :]
        diff = jnp.where(valid, ACTIVATIONS[cfg.activation](u) - tgt, 0.0)
        ybar = 2.0 * diff / count
        lam, h, xbar, rbar = _backward(
            cfg, need_x, need_r, c4, eta, stored, x, r, m, u, ybar, jnp.zeros_like(w)
        )
        return (
            jnp.sum(diff**2),
            h,
            lam if need_w0 else None,
            xbar,
            rbar,
            -ybar if need_t else None,
        )

    traj = (w0, inputs, rewards, step_mask, neuron_mask, target)
    chunk = None if cfg.chunk == 1 else cfg.chunk
    parts, h, lam, xbar, rbar, tbar = jax.lax.map(one, traj, batch_size=chunk)
    h = jnp.sum(h, axis=0)
    grads = (eta * h, jnp.sum(c4 * h), lam, xbar, rbar, tbar)
    return jnp.sum(parts) / count, grads


def _mse_bwd(cfg, grads, g):
    dc4, deta, dw0, dx, dr, dt = grads
    scale = lambda v: None if v is None else (g * v).astype(v.dtype)
    return (scale(dc4), scale(deta), scale(dw0), scale(dx), scale(dr), None, None, scale(dt))


_mse.defvjp(_mse_fwd, _mse_bwd, symbolic_zeros=True)


def taylor_activity_mse(layer: PlasticDense, data, *, checkpoint: bool | int = False):
    """`metaplastic.losses.ActivityMSE()` of a `PlasticDense` layer with a `TaylorRule`, with
    the hand-written reverse pass (see the module docstring). Same value as the plain loss;
    the gradient matches `jax.grad` of it up to rounding."""
    c4 = canonical_coefficients(layer.rule)
    dtype = _common_dtype(c4, data.initial_weights, data.inputs, data.activity)
    length = data.inputs.shape[1]
    n_out, n_in = data.initial_weights.shape[1:]
    cfg = _config(layer.activation, checkpoint, length, n_out * n_in * jnp.dtype(dtype).itemsize)
    return _mse(
        cfg,
        c4.astype(dtype),
        jnp.asarray(layer.eta, dtype),
        data.initial_weights.astype(dtype),
        data.inputs.astype(dtype),
        data.rewards.astype(dtype),
        data.step_mask,
        data.neuron_mask,
        data.activity.astype(dtype),
    )


# ---------------------------------------------------------------------------- one simulation


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _simulate(cfg, c4, eta, w0, inputs, rewards, mask):
    c3 = _reward_contracted(c4, rewards)
    final, u = _scan_forward(cfg, eta, w0, inputs, c3, mask)
    return ACTIVATIONS[cfg.activation](u), final


def _simulate_fwd(cfg, c4, eta, w0, inputs, rewards, mask):
    # Which input cotangents are wanted, carried in the residuals' structure: `()` or `None`.
    need = tuple(() if v.perturbed else None for v in (inputs, rewards))
    c4, eta, w0, inputs, rewards, mask = (v.value for v in (c4, eta, w0, inputs, rewards, mask))
    final, u, stored = _forward(cfg, c4, eta, w0, inputs, rewards, mask)
    res = (need, c4, eta, stored, inputs, rewards, mask, u)
    return (ACTIVATIONS[cfg.activation](u), final), res


def _simulate_bwd(cfg, res, cotangents):
    need, c4, eta, stored, inputs, rewards, mask, u = res
    need_x, need_r = (v is not None for v in need)
    ybar, lam = cotangents
    if isinstance(ybar, SymbolicZero):
        ybar = jnp.zeros(u.shape, u.dtype)
    w_shape = stored.shape[1:]
    if isinstance(lam, SymbolicZero):
        lam = jnp.zeros(w_shape, u.dtype)
    lam, h, xbar, rbar = _backward(
        cfg, need_x, need_r, c4, eta, stored, inputs, rewards, mask, u, ybar, lam
    )
    return eta * h, jnp.sum(c4 * h), lam, xbar, rbar, None


_simulate.defvjp(_simulate_fwd, _simulate_bwd, symbolic_zeros=True)


def taylor_simulate(
    layer: PlasticDense,
    initial_weights: Float[Array, "n_out n_in"],
    inputs: Float[Array, "time n_in"],
    rewards: Float[Array, " time"],
    step_mask: Bool[Array, " time"],
    *,
    checkpoint: bool | int = False,
) -> tuple[Float[Array, "time n_out"], Float[Array, "n_out n_in"]]:
    """One trajectory's activity and final weights, differentiated in reverse mode by the
    hand-written pass (see the module docstring)."""
    c4 = canonical_coefficients(layer.rule)
    dtype = _common_dtype(c4, initial_weights, inputs)
    n_out, n_in = initial_weights.shape
    matrix_bytes = n_out * n_in * jnp.dtype(dtype).itemsize
    cfg = _config(layer.activation, checkpoint, inputs.shape[0], matrix_bytes)
    return _simulate(
        cfg,
        c4.astype(dtype),
        jnp.asarray(layer.eta, dtype),
        initial_weights.astype(dtype),
        inputs.astype(dtype),
        rewards.astype(dtype),
        step_mask,
    )
