"""Rule-recovery experiments: fit an ensemble of student rules to recorded choices, generate
training and held-out behaviour from a ground-truth rule, and score the recovered rules."""

import logging
import time
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

from .._errors import MetaplasticError
from .._fit import fit
from .._record import FitResult
from .._solver import AbstractSolver
from .._types import Key
from ..losses import L1
from ..rules import AbstractRule, TaylorRule
from ._data import DEFAULT_DRAWS, ChoiceDataset, NoisyChoices, PackedChoiceDataset
from ._ensembles import mlp_student, stack_members, stack_rules, taylor_student
from ._generate import generate_behaviour
from ._metrics import compare_behaviour
from ._network import DEFAULT_INPUT_VARIANCE, MushroomBody, OdourEncoding
from ._objectives import ChoiceBCE
from ._task import OperantTask


logger = logging.getLogger("metaplastic")


class RecoveryData(eqx.Module):
    """Simulated behaviour for a rule-recovery experiment (see `recovery_data`).

    - `teacher`: the ground-truth `MushroomBody`.
    - `encoding`: the `OdourEncoding`.
    - `train`: the training trajectories, packed, `(seeds, n_train, ...)`; with `draws`,
      `NoisyChoices` `(seeds, n_train, draws, ...)`.
    - `test`: the held-out trajectories, `(seeds, n_test, ...)`.
    - `test_draws`: with `draws`, the held-out trajectories as `NoisyChoices` (their own
      draws), for the marginal likelihood; else `None`.
    - `seconds`: the time it took to generate them (compilation included).
    """

    teacher: MushroomBody
    encoding: OdourEncoding
    train: PackedChoiceDataset | NoisyChoices
    test: ChoiceDataset
    test_draws: NoisyChoices | None
    seconds: float

    @property
    def seeds(self) -> int:
        return self.test.trial_mask.shape[0]


def recovery_data(
    true_rule: AbstractRule,
    *,
    seeds: int = 5,
    n_train: int = 18,
    n_test: int = 7,
    task: OperantTask | None = None,
    n_in: int = 2,
    hidden: int = 10,
    input_variance: float = DEFAULT_INPUT_VARIANCE,
    reward_signal: str = "prediction_error",
    reward_delay: int = 0,
    resample_inputs: bool = True,
    draws: int | None = DEFAULT_DRAWS,
    test_draws: int | None = None,
    key: Key,
) -> RecoveryData:
    """Generate training and held-out behaviour from a ground-truth rule, for every seed.

    Each seed gets its own `n_train` training and `n_test` held-out trajectories. They come
    from one generation call (one compilation); every trajectory is drawn from its own key,
    so held-out trajectories are never training ones.

    **Arguments:**

    - `true_rule`: the ground-truth rule over `x, y, w, r`.
    - `seeds`, `n_train`, `n_test`: ensemble size and trajectories per seed.
    - `task`: the operant task (default `OperantTask()`: 3 blocks of 80 trials).
    - `n_in`, `hidden`, `input_variance`, `reward_signal`: the network and the encoding.
    - `reward_delay`: trials between a choice and its reward signal (`MushroomBody`); the
      teacher, and so every network fitted from `teacher.with_rule`, has it.
    - `resample_inputs`: fit and score on a fresh draw of the input noise (see
      `generate_behaviour`).
    - `draws`: fit the marginal likelihood over this many draws of the unobserved input
      noise (default `DEFAULT_DRAWS`): `train` (and `test_draws`) are `NoisyChoices` encoded
      from the recorded odours (the generating noise is never used). `None`: a single draw
      (`resample_inputs`), packed, fitted as if it were the noise behind the choices.
    - `test_draws`: draws of the held-out trajectories' marginal likelihood (default
      `draws`); more draws estimate it more precisely.
    - `key`: the encoding, the teacher's initial weights and all the behaviour.

    **Returns:**

    A `RecoveryData`.
    """
    start = time.perf_counter()
    if test_draws is not None and draws is None:
        raise MetaplasticError("test_draws needs draws (the marginal likelihood).")
    if draws is not None and not resample_inputs:
        raise MetaplasticError(
            "draws replaces the recorded inputs by draws of the input noise; pass draws=None "
            "with resample_inputs=False (to fit on the generating inputs)."
        )
    task = OperantTask() if task is None else task
    k_enc, k_net, k_data = jr.split(key, 3)
    encoding = OdourEncoding(n_in, variance=input_variance, key=k_enc)
    teacher = MushroomBody(
        true_rule,
        n_in=n_in,
        hidden=hidden,
        reward_signal=reward_signal,
        reward_delay=reward_delay,
        key=k_net,
    )
    everything = generate_behaviour(
        teacher,
        task,
        encoding,
        seeds * (n_train + n_test),
        key=k_data,
        resample_inputs=resample_inputs,
    ).data
    # Split and stack on the host (see `metaplastic._random`).
    host = lambda tree: jax.tree.map(lambda a: np.asarray(a) if eqx.is_array(a) else a, tree)
    # device_put compiles nothing; jnp.asarray compiles a small program per array shape.
    device = lambda tree: jax.tree.map(lambda a: jax.device_put(a) if eqx.is_array(a) else a, tree)
    everything = host(everything)
    split = n_train * seeds
    train = jax.tree.map(lambda a: a[:split], everything)
    test = device(stack_members(jax.tree.map(lambda a: a[split:], everything), seeds))
    if draws is None:
        test_draws = None
        packed = PackedChoiceDataset.from_choices(device(train))
    else:
        # Keys of their own (folded in), so the behaviour is the same with or without draws.
        k_train, k_test = jr.split(jr.fold_in(key, 1))
        packed = NoisyChoices.from_choices(device(train), encoding, draws, key=k_train)
        held_out = device(jax.tree.map(lambda a: a[split:], everything))
        n_test_draws = draws if test_draws is None else test_draws
        held_out = NoisyChoices.from_choices(held_out, encoding, n_test_draws, key=k_test)
        test_draws = device(stack_members(host(held_out), seeds))
    train = device(stack_members(host(packed), seeds))
    jax.block_until_ready((train, test, test_draws))
    return RecoveryData(teacher, encoding, train, test, test_draws, time.perf_counter() - start)


class RuleRecovery(eqx.Module):
    """The outcome of `recover_rule`.

    - `fitted`: the fitted networks, rule arrays with a leading seed axis.
    - `scores`: per-seed medians over held-out trajectories, each `(seeds,)`: `r2_weights`,
      `r2_activity`, `percent_deviance`, `true_percent_deviance`.
    - `per_trajectory`: the same metrics per held-out trajectory, `(seeds, n_test)`.
    - `fit`: the `FitResult` of the vmapped fit.
    - `seconds`: wall time of `generate`, `fit` and `evaluate`.
    """

    fitted: MushroomBody
    scores: dict[str, np.ndarray]
    per_trajectory: dict[str, np.ndarray]
    fit: FitResult
    seconds: dict[str, float]

    def median(self) -> dict[str, float]:
        """The median over seeds of each score."""
        return {k: float(np.median(v)) for k, v in self.scores.items()}


def recover_rule(
    true_rule: AbstractRule | None = None,
    *,
    data: RecoveryData | None = None,
    rule: Callable[..., AbstractRule] | Literal["taylor", "mlp"] = "taylor",
    seeds: int = 5,
    solver: AbstractSolver | None = None,
    steps: int = 12,
    l1: float = 1e-3,
    batch_size: int | None = None,
    key: Key,
    progress: bool = True,
    **data_options,
) -> RuleRecovery:
    """Recover a ground-truth rule from simulated behaviour, several seeds vmapped.

    Every seed fits its own training trajectories from its own initial student rule, all in
    one vmapped `metaplastic.fit` of `ChoiceBCE`; every fitted rule is then scored against
    the true one on that seed's held-out trajectories (`compare_behaviour`), and the median
    over held-out trajectories is reported per seed.

    **Arguments:**

    - `true_rule`: the ground-truth rule; the data are generated by `recovery_data` with
      `seeds`, `key` and any `data_options` (`n_train`, `n_test`, `task`, `n_in`,
      `hidden`, `input_variance`, `reward_signal`, `reward_delay`, `resample_inputs`, `draws`,
      `test_draws`).
    - `data`: instead of `true_rule`, data made earlier by `recovery_data` (e.g. to fit
      several rule families on the same trajectories).
    - `rule`: the student: `"taylor"` (`taylor_student`), `"mlp"` (`mlp_student`) or a
      callable `rule(key=...) -> AbstractRule`.
    - `solver`, `steps`, `batch_size`: as in `metaplastic.fit` (default: Levenberg–Marquardt,
      i.e. Fisher scoring, for 12 steps on every training trajectory).
    - `l1`: the weight of `metaplastic.losses.L1` on a Taylor student's coefficients (none
      for other students).
    - `key`: the data (if generated here), the initial student rules and the batches.

    **Returns:**

    A `RuleRecovery`.
    """
    k_data, k_fit = jr.split(key)
    if data is None:
        if true_rule is None:
            raise MetaplasticError("recover_rule needs a true_rule or data.")
        data = recovery_data(true_rule, seeds=seeds, key=k_data, **data_options)
    elif data_options or true_rule is not None:
        raise MetaplasticError(
            "recover_rule was given data; true_rule and data options would be ignored."
        )
    make = {"taylor": taylor_student, "mlp": mlp_student}.get(rule, rule)  # type: ignore[arg-type]
    if not callable(make):
        raise MetaplasticError(f"rule must be 'taylor', 'mlp' or a callable, got {rule!r}.")
    seeds = data.seeds
    t1 = time.perf_counter()
    k_init, k_batches = jr.split(k_fit)
    rules = stack_rules(lambda k: make(key=k), jr.split(k_init, seeds))
    penalty = L1(l1) if isinstance(rules, TaylorRule) and l1 > 0 else ()
    result = fit(
        data.teacher.with_rule(rules),
        data.train,
        ChoiceBCE(),
        solver=solver,
        steps=steps,
        batch_size=batch_size,
        penalty=penalty,
        key=k_batches,
        progress=progress,
        ensemble=True,
    )
    t2 = time.perf_counter()
    per = compare_behaviour(
        data.teacher, result.model, data.test, draws=data.test_draws, ensemble=True
    )
    t3 = time.perf_counter()
    scores = {k: np.median(v, axis=1) for k, v in per.items()}
    logger.info("recover_rule: %s", {k: float(np.median(v)) for k, v in scores.items()})
    return RuleRecovery(
        fitted=result.model,
        scores=scores,
        per_trajectory=per,
        fit=result,
        seconds={"generate": data.seconds, "fit": t2 - t1, "evaluate": t3 - t2},
    )
