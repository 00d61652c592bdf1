"""Simulated flies for the uncertainty and model-selection examples: many datasets of closed-loop
choices from one ground-truth mushroom body, and the small rule families of the fly analyses
(`metaplastic.flies.FAMILY_TERMS`) as ensembles of students, one member per dataset.

Imported by the scripts as `import _simulated_flies` (this folder is on `sys.path`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import metaplastic as mp


bh = mp.behaviour
# The fly families' rule: first order over (x, w, r), free terms chosen by a trainable mask.
FACTORS = ("x", "w", "r")
# The variance of the odour-encoding noise the results in examples/results/uncertainty.md
# were measured with (the library's default then; it is now 0.015², the published model's).
INPUT_VARIANCE = 0.015


class Flies(eqx.Module):
    """`datasets` simulated datasets of `n_train` training and `n_test` held-out flies.

    - `train`: packed training choices, `(datasets, n_train, ...)`, whose inputs are a fresh
      draw of the odour encoding's noise (the fitting protocol of the real flies, whose input
      noise is unknown: a misspecified likelihood).
    - `train_generating`: the same choices with the inputs that produced them (a
      well-specified likelihood, possible only in simulation).
    - `test`: held-out flies (fresh inputs), packed, `(datasets, n_test, ...)`;
      `test_generating`: the same with their generating inputs.
    - `train_marginal`, `test_marginal`: with `draws`, the same flies as `NoisyChoices`
      (`draws` draws of the input noise each) for the marginal likelihood, else `None`.
    - `length`: the padded number of presentations of every packed trajectory.
    """

    teacher: bh.MushroomBody
    encoding: bh.OdourEncoding
    task: bh.OperantTask
    train: bh.PackedChoiceDataset
    train_generating: bh.PackedChoiceDataset
    test: bh.PackedChoiceDataset | None
    test_generating: bh.PackedChoiceDataset | None
    train_marginal: bh.NoisyChoices | None
    test_marginal: bh.NoisyChoices | None
    length: int = eqx.field(static=True)
    draws: int | None = eqx.field(static=True)


def pad(data, length: int):
    """Pad the presentation axis of a packed dataset (a `PackedChoiceDataset`, or the
    `NoisyChoices` of the marginal likelihood) to `length`, so that datasets generated apart
    can be stacked."""
    if isinstance(data, bh.NoisyChoices):
        return bh.NoisyChoices(pad(data.packed, length))
    n = data.choices.shape[-1]
    if n > length:
        raise RuntimeError(f"a generated trajectory has {n} presentations, more than {length}")
    # The presentation axis is the last of choices, mask and trial index, the one before
    # last of the inputs.
    widths = lambda a, axis: [(0, 0)] * (a.ndim + axis) + [(0, length - n)] + [(0, 0)] * (-axis - 1)
    arrays = (data.inputs, data.choices, data.presentation_mask, data.trial_index)
    axes = (-2, -1, -1, -1)
    return eqx.tree_at(
        lambda p: (p.inputs, p.choices, p.presentation_mask, p.trial_index),
        data,
        tuple(jnp.asarray(np.pad(np.asarray(a), widths(a, ax))) for a, ax in zip(arrays, axes)),
    )


def simulate_flies(
    true_rule: mp.AbstractRule,
    *,
    datasets: int,
    n_train: int,
    n_test: int = 0,
    trials_per_block: int = 80,
    draws: int | None = None,
    input_variance: float = INPUT_VARIANCE,
    key,
) -> Flies:
    """Generate every dataset in one closed-loop call (one compilation)."""
    k_enc, k_net, k_data = jr.split(key, 3)
    encoding = bh.OdourEncoding(2, variance=input_variance, key=k_enc)
    teacher = bh.MushroomBody(true_rule, n_in=2, hidden=10, key=k_net)
    task = bh.OperantTask(block_lengths=trials_per_block)
    per = n_train + n_test
    gen = bh.generate_behaviour(teacher, task, encoding, datasets * per, key=k_data)
    generating = eqx.tree_at(lambda d: d.inputs, gen.data, gen.generating_inputs)
    packed = bh.PackedChoiceDataset.from_choices(gen.data)
    packed_gen = bh.PackedChoiceDataset.from_choices(generating)
    # Room for bootstrap replicates whose flies choose more often than these.
    length = int(1.3 * packed.choices.shape[-1]) + 8
    packed, packed_gen = pad(packed, length), pad(packed_gen, length)

    def split(tree, train):
        tree = bh.stack_members(tree, datasets)
        part = slice(0, n_train) if train else slice(n_train, per)
        return jax_map(lambda a: a[:, part], tree)

    test = split(packed, False) if n_test else None
    train_m = test_m = None
    if draws:
        noisy = bh.NoisyChoices.from_choices(gen.data, encoding, draws, key=jr.fold_in(key, 1))
        noisy = pad(noisy, length)
        train_m = split(noisy, True)
        test_m = split(noisy, False) if n_test else None
    return Flies(
        teacher,
        encoding,
        task,
        split(packed, True),
        split(packed_gen, True),
        test,
        split(packed_gen, False) if n_test else None,
        train_m,
        test_m,
        length,
        draws,
    )


def jax_map(fn, tree):
    return jax.tree.map(lambda a: fn(a) if eqx.is_array(a) else a, tree)


def family_students(flies: Flies, terms, members: int, *, key) -> bh.MushroomBody:
    """The teacher's network with an ensemble of student rules whose free terms are `terms`
    (the others frozen at 0), started near zero."""
    zero = mp.TaylorRule.zeros(FACTORS, order=1)
    mask = zero.mask(list(terms))
    rule = mp.TaylorRule(zero.coefficients, FACTORS, trainable=mask)
    c = bh.TAYLOR_STUDENT_SCALE * jr.normal(key, (members,) + zero.coefficients.shape) * mask
    return flies.teacher.with_rule(eqx.tree_at(lambda r: r.coefficients, rule, c))


def solver(n_train: int, draws: int = 1) -> mp.LevenbergMarquardt:
    """Levenberg–Marquardt with the Jacobian taken a few flies at a time (at most 6 replays:
    flies times noise draws), so that hundreds of vmapped datasets fit in memory."""
    most = max(1, 6 // draws)
    chunks = next(c for c in range(1, n_train + 1) if n_train % c == 0 and n_train // c <= most)
    return mp.LevenbergMarquardt(chunks=chunks)


def coefficient(rules: mp.TaylorRule, term: str) -> np.ndarray:
    """The coefficient of `term` in every member of a stacked `TaylorRule`."""
    e = (0,) * len(rules.factors) if term == "1" else rules.monomial(term)
    return np.asarray(rules.coefficients)[(slice(None),) + e]


def simulator(flies: Flies, n_train: int, *, marginal: bool = False):
    """`simulate(model, data, key, n)` for `metaplastic.bootstrap`: `n` replicate datasets of
    `n_train` flies from a fitted network, closed loop, prepared as the data were: a fresh
    draw of the input noise, or (`marginal`) `flies.draws` draws for the marginal
    likelihood."""

    def simulate(model, data, key, n):
        del data
        k_gen, k_draws = jr.split(key)
        gen = bh.generate_behaviour(model, flies.task, flies.encoding, n * n_train, key=k_gen)
        if marginal:
            packed = bh.NoisyChoices.from_choices(
                gen.data, flies.encoding, flies.draws, key=k_draws
            )
        else:
            packed = bh.PackedChoiceDataset.from_choices(gen.data)
        return bh.stack_members(pad(packed, flies.length), n)

    return simulate
