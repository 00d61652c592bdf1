"""The benchmarks. Each is a generator of result records (one JSON object per configuration)."""

import time
from collections.abc import Callable, Iterator

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import metaplastic as mp

from ._harness import (
    REPEATS,
    CompileTimer,
    coefficient_loss,
    coefficient_value_and_grad,
    loglog_slope,
    oja_dataset,
    peak_rss_mb,
    record,
    student_rule,
    synapse_steps,
    time_compiled,
)


N_IN, N_OUT, LENGTH = 100, 1000, 50
LAYER = {"n_in": N_IN, "n_out": N_OUT, "activation": "sigmoid", "terms": 27, "dtype": "float32"}


def _throughput(data, step_s: float) -> dict:
    return {"synapse_steps_per_s": synapse_steps(data) / step_s}


# ---------------------------------------------------------------------------- calibration


def ceiling() -> Iterator[dict]:
    """The practical ceiling: a scan that only updates the weight matrix elementwise
    (`W ← W ⊙ a_t + b_t`, one read and one write of W per step), vmapped over the batch."""
    for batch in (1, 50):
        k = jr.split(jr.key(2), 3)
        w0 = jr.normal(k[0], (batch, N_OUT, N_IN))
        a = 1.0 + 1e-3 * jr.normal(k[1], (batch, LENGTH, N_IN))
        b = 1e-3 * jr.normal(k[2], (batch, LENGTH, N_OUT))

        def run(w0, a, b):
            def one(w, a, b):
                body = lambda w, ab: (w * ab[0][None, :] + ab[1][:, None], None)
                return jax.lax.scan(body, w, (a, b))[0]

            return jax.vmap(one)(w0, a, b)

        compile_s, step_s, _ = time_compiled(run, w0, a, b)
        config = {"batch": batch, "T": LENGTH, "n_in": N_IN, "n_out": N_OUT, "dtype": "float32"}
        steps = batch * LENGTH * N_IN * N_OUT
        yield record(
            "ceiling",
            config,
            compile_s=compile_s,
            step_s=step_s,
            throughput={"synapse_steps_per_s": steps / step_s},
        )


# ---------------------------------------------------------------------------- the Oja layer


def oja_forward() -> Iterator[dict]:
    """The trajectory loss (forward pass only, `mp.losses.ActivityMSE()`'s value) of the
    100 → 1000 layer with a 27-term rule."""
    for batch in (1, 50):
        data = oja_dataset(batch, LENGTH)
        loss = coefficient_loss()
        compile_s, step_s, _ = time_compiled(loss, student_rule().coefficients, data)
        config = {"batch": batch, "T": LENGTH, **LAYER}
        yield record(
            "oja_forward",
            config,
            compile_s=compile_s,
            step_s=step_s,
            throughput=_throughput(data, step_s),
        )


def _fit_compile(data) -> dict:
    """A real `fit` of two full-batch Adam steps (`ActivityMSE`, differentiated by the
    default `Automatic`, i.e. the hand-written reverse pass): the trace count, JAX's own
    timings of tracing, lowering and compiling the fit step (`run_step`, the one function
    `fit` jits), and the wall time of each step."""
    layer = mp.nn.PlasticDense(student_rule(), eta=1.0)
    stamps = [time.perf_counter()]
    with CompileTimer("run_step") as timer:
        result = mp.fit(
            layer,
            data,
            mp.losses.ActivityMSE(),
            solver=mp.Optax(optax.adam(1e-3)),
            steps=2,
            progress=False,
            callback=lambda *_: stamps.append(time.perf_counter()) and None,
        )
    parts = timer.take()
    return {
        "fit_compile_s": round(sum(parts.values()), 3),
        "fit_trace_s": round(parts["trace"], 3),
        "fit_lower_s": round(parts["lower"], 3),
        "fit_xla_compile_s": round(parts["xla"], 3),
        "fit_first_step_s": round(stamps[1] - stamps[0], 3),
        "fit_steady_step_s": round(stamps[2] - stamps[1], 3),
        "fit_n_traces": result.n_traces,
    }


def oja_grad() -> Iterator[dict]:
    """Forward + backward of the trajectory loss with respect to the 27 Taylor coefficients
    (the library's hand-written reverse pass, `mp.TaylorReverse`), and the compile time and
    trace count of a real `fit` step."""
    for batch in (1, 50):
        data = oja_dataset(batch, LENGTH)
        grad = coefficient_value_and_grad()
        compile_s, step_s, _ = time_compiled(grad, student_rule().coefficients, data)
        config = {"batch": batch, "T": LENGTH, **LAYER}
        extra = _fit_compile(data) if batch == 50 else {}
        yield record(
            "oja_grad",
            config,
            compile_s=compile_s,
            step_s=step_s,
            throughput=_throughput(data, step_s),
            **extra,
        )


def naive_loss(coefficients, data, eta: float = 1.0):
    """A deliberately straightforward implementation of the same loss: every step builds the
    27 monomials `x^a y^b w^c` of every synapse, `(n_out, n_in, 3, 3, 3)`, and contracts them
    with θ by einsum; `jax.grad` differentiates it through the scan."""
    exponents = jnp.arange(3)

    def trajectory(w0, inputs, mask, target, recorded):
        def step(w, xs):
            x, valid = xs
            y = jax.nn.sigmoid(w @ x)
            xp = x[:, None] ** exponents  # (n_in, 3)
            yp = y[:, None] ** exponents  # (n_out, 3)
            wp = w[:, :, None] ** exponents  # (n_out, n_in, 3)
            monomials = (
                xp[None, :, :, None, None] * yp[:, None, None, :, None] * wp[:, :, None, None, :]
            )
            dw = jnp.einsum("ijabc,abc->ij", monomials, coefficients)
            return jnp.where(valid, w + eta * dw, w), y

        _, activity = jax.lax.scan(step, w0, (inputs, mask))
        valid = mask[:, None] & recorded[None, :]
        return jnp.sum(jnp.where(valid, activity - target, 0.0) ** 2), jnp.sum(valid)

    sq, count = jax.vmap(trajectory)(
        data.initial_weights, data.inputs, data.step_mask, data.activity, data.neuron_mask
    )
    return jnp.sum(sq) / jnp.maximum(jnp.sum(count), 1)


def naive_baseline() -> Iterator[dict]:
    """The naive per-synapse-monomial implementation, plain `jax.grad` through the library's
    factorised simulation (`mp.ReverseMode()`), and the library's reverse pass
    (`mp.TaylorReverse()`), on the same data in one run.
    Batch 1: the naive gradient keeps 27 weight-sized monomial arrays per step (≈0.5 GB for
    T = 50), so a batch of 50 would not fit in memory."""
    data = oja_dataset(1, LENGTH)
    theta = student_rule().coefficients
    impls: dict[str, Callable] = {
        "naive": jax.value_and_grad(naive_loss),
        "library_autodiff": coefficient_value_and_grad(mp.ReverseMode()),
        "library": coefficient_value_and_grad(mp.TaylorReverse()),
    }
    out = {}
    for impl, value_and_grad in impls.items():
        compile_s, step_s, (value, grad) = time_compiled(value_and_grad, theta, data)
        out[impl] = (compile_s, step_s, np.asarray(grad))
    reference = out["naive"][2]
    for impl, (compile_s, step_s, grad) in out.items():
        err = float(np.max(np.abs(grad - reference)) / np.max(np.abs(reference)))
        yield record(
            "naive_baseline",
            {"impl": impl, "batch": 1, "T": LENGTH, **LAYER},
            compile_s=compile_s,
            step_s=step_s,
            throughput=_throughput(data, step_s),
            speedup_vs_naive=round(out["naive"][1] / step_s, 2),
            grad_rel_diff_vs_naive=err,
        )


def long_trajectory() -> Iterator[dict]:
    """The gradient through T = 10,000 steps of the 100 → 1000 layer. The reverse pass stores
    one weight matrix per segment of √T steps and recomputes inside a segment. What other
    strategies would need is read from XLA's own buffer assignment for the compiled program
    (`memory_analysis()`), without running them."""
    length = 10_000
    data = oja_dataset(1, length)
    theta = student_rule().coefficients
    rss_before = peak_rss_mb()
    grad = coefficient_value_and_grad()
    compile_s, step_s, _ = time_compiled(grad, theta, data)

    def temp_mb(differentiation: mp.AbstractDifferentiation) -> float:
        value_and_grad = coefficient_value_and_grad(differentiation)
        compiled = jax.jit(value_and_grad).lower(theta, data)
        return round(compiled.compile().memory_analysis().temp_size_in_bytes / 2**20, 1)

    matrix_mb = N_IN * N_OUT * 4 / 2**20
    yield record(
        "long_trajectory",
        {"batch": 1, "T": length, "checkpoint": "auto (sqrt(T)-step segments)", **LAYER},
        compile_s=compile_s,
        step_s=step_s,
        throughput=_throughput(data, step_s),
        peak_rss_before_mb=round(rss_before, 1),
        xla_temp_mb=temp_mb(mp.TaylorReverse()),
        estimate_store_every_step_mb=temp_mb(mp.TaylorReverse(checkpoint=True)),
        estimate_autodiff_no_checkpoint_mb=temp_mb(mp.ReverseMode()),
        estimate_autodiff_checkpoint_100_mb=temp_mb(mp.ReverseMode(checkpoint=100)),
        weight_matrix_mb=round(matrix_mb, 3),
    )


def scaling() -> Iterator[dict]:
    """Step time of the gradient (batch 1) against the trajectory length and the layer size,
    with the slope of log(time) against log(size) (1 = linear). The configurations are timed
    in turn, repetition by repetition, so that a change in the machine's load affects them
    alike."""
    theta = student_rule().coefficients
    grad = coefficient_value_and_grad()
    configs = [("T", length, N_OUT) for length in (25, 50, 100, 200)]
    configs += [("synapses", LENGTH, n_out) for n_out in (250, 500, 2000)]
    runs = {}
    for vary, length, n_out in configs:
        data = oja_dataset(1, length, n_out=n_out)
        start = time.perf_counter()
        compiled = jax.jit(grad).lower(theta, data).compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(theta, data))
        runs[(vary, length, n_out)] = (compiled, data, compile_s, [])
    for _ in range(REPEATS):
        for compiled, data, _, times in runs.values():
            start = time.perf_counter()
            jax.block_until_ready(compiled(theta, data))
            times.append(time.perf_counter() - start)
    series = {"T": [], "synapses": []}
    for (vary, length, n_out), (_, data, compile_s, times) in runs.items():
        step_s = float(np.median(times))
        series["T" if vary == "T" else "synapses"].append((length, n_out, step_s))
        yield record(
            "scaling",
            {"vary": vary, "batch": 1, "T": length, **{**LAYER, "n_out": n_out}},
            compile_s=compile_s,
            step_s=step_s,
            throughput=_throughput(data, step_s),
        )
    # The T = 50, 1000-neuron point belongs to both series.
    series["synapses"] += [p for p in series["T"] if p[0] == LENGTH]
    for vary, points in series.items():
        points = sorted(points, key=lambda p: p[0] if vary == "T" else p[1])
        sizes = [p[0] if vary == "T" else N_IN * p[1] for p in points]
        times = [p[2] for p in points]
        yield record(
            "scaling",
            {"vary": vary, "fit": "log(step_s) = slope * log(size) + c", "sizes": sizes},
            compile_s=None,
            step_s=None,
            throughput={},
            slope=round(loglog_slope(sizes, times), 3),
            step_s_series=[round(t, 6) for t in times],
        )


def _timed_fit(model, data, **kwargs) -> tuple[mp.FitResult, float, float]:
    stamps = [time.perf_counter()]
    callback = lambda *_: stamps.append(time.perf_counter()) and None
    result = mp.fit(model, data, progress=False, callback=callback, **kwargs)
    steps = np.diff(stamps)
    return result, float(steps[0] - np.median(steps[1:])), float(np.median(steps[1:]))


def devices() -> Iterator[dict]:
    """A batched fit sharded across all visible devices (data-parallel over trajectories, and
    an ensemble of seeds split over devices), against the same fit on one device. On a CPU the
    suite runs this benchmark with 4 virtual devices
    (`XLA_FLAGS=--xla_force_host_platform_device_count=4`), which share the same cores.
    Every fit is full-batch Adam, one step per full pass, differentiated by `jax.grad` through
    the scan (`ReverseMode`) on one device and on several: a loss wrapped by `data_parallel`
    is a plain function, which the hand-written Taylor reverse pass does not cover."""
    n = len(jax.devices())
    mesh = mp.sharding.batch_mesh()
    n_steps = REPEATS + 1
    data = oja_dataset(2 * n, LENGTH)
    layer = mp.nn.PlasticDense(student_rule(), eta=1.0)
    kwargs = dict(
        loss=mp.losses.ActivityMSE(),
        solver=mp.Optax(optax.adam(1e-3)),
        steps=n_steps,
        differentiation=mp.ReverseMode(),
    )
    single, single_compile, single_step = _timed_fit(layer, data, **kwargs)
    sharded, compile_s, step_s = _timed_fit(
        mp.sharding.replicate(layer, mesh),
        mp.sharding.shard_batch(data, mesh),
        **{**kwargs, "loss": mp.sharding.data_parallel(mp.losses.ActivityMSE(), mesh)},
    )
    diff = float(jnp.max(jnp.abs(sharded.model.rule.coefficients - single.model.rule.coefficients)))
    yield record(
        "devices",
        {"layout": "data_parallel", "batch": 2 * n, "T": LENGTH, "steps": n_steps, **LAYER},
        compile_s=compile_s,
        step_s=step_s,
        throughput=_throughput(data, step_s),
        single_device_step_s=round(single_step, 6),
        single_device_compile_s=round(single_compile, 4),
        max_coefficient_diff_vs_single_device=diff,
        n_traces=sharded.n_traces,
    )

    members = n
    make = lambda key: mp.nn.PlasticDense(
        mp.TaylorRule(1e-3 * jr.normal(key, (3, 3, 3)), ("x", "y", "w")), eta=1.0
    )
    ensemble = eqx.filter_vmap(make)(jr.split(jr.key(3), members))
    small = oja_dataset(2, LENGTH)
    ens_kwargs = dict(kwargs, ensemble=True, data_ensemble_axis=None)
    single, single_compile, single_step = _timed_fit(ensemble, small, **ens_kwargs)
    placed = mp.sharding.shard_ensemble(ensemble, mesh)
    sharded, compile_s, step_s = _timed_fit(placed, small, **ens_kwargs)
    diff = float(jnp.max(jnp.abs(sharded.model.rule.coefficients - single.model.rule.coefficients)))
    steps = members * synapse_steps(small)
    yield record(
        "devices",
        {"layout": "ensemble", "members": members, "batch": 2, "T": LENGTH, **LAYER},
        compile_s=compile_s,
        step_s=step_s,
        throughput={"synapse_steps_per_s": steps / step_s},
        single_device_step_s=round(single_step, 6),
        single_device_compile_s=round(single_compile, 4),
        max_coefficient_diff_vs_single_device=diff,
        n_traces=sharded.n_traces,
    )


# ---------------------------------------------------------------------------- behaviour


def fly_protocol(seeds: int) -> dict:
    """The `examples/reward_rule.py` Taylor protocol in this (fresh) process: generate
    `seeds` × (18 training + 7 held-out) trajectories of 240 trials from the rule `x*r`, fit
    the 81-coefficient Taylor rule with L1 by 12 Levenberg–Marquardt steps (all seeds
    vmapped; the students and keys of `mp.behaviour.recover_rule`), score it on the held-out
    trajectories. Wall times of each phase, compile included.

    `fit` compiles one step (its jitted `run_step`, traced once) and runs it `steps` times
    from the host, so `compile_s` is JAX's own compile time of that one step program
    (tracing, lowering, XLA); whatever else compiles in the fit phase (drawing the initial
    students, the solver's initial state, small array operations; mostly the draws) is
    `fit_compile_other_s`. `step_s` is the fit's wall time
    less everything compiled in it, per step; `steady_step_s` the median wall time of the
    steps after the first."""
    k_data, k_fit = jr.split(jr.key(0))
    steps = 12
    with CompileTimer() as timer, CompileTimer("run_step") as step_timer:
        start = time.perf_counter()
        data = mp.behaviour.recovery_data(mp.rules.reward_modulated(), seeds=seeds, key=k_data)
        generated = time.perf_counter()
        generate_compile = timer.take()
        step_timer.take()
        # What `recover_rule(data=data, key=jr.key(0))` fits (its key splits are mirrored
        # here), called directly so that the fit and the scoring are timed apart.
        k_init, k_batches = jr.split(k_fit)
        students = mp.behaviour.stack_rules(
            lambda k: mp.behaviour.taylor_student(key=k), jr.split(k_init, seeds)
        )
        stamps = [time.perf_counter()]
        result = mp.fit(
            data.teacher.with_rule(students),
            data.train,
            mp.behaviour.ChoiceBCE(),
            solver=mp.LevenbergMarquardt(),
            steps=steps,
            penalty=mp.losses.L1(1e-3),
            key=k_batches,
            progress=False,
            ensemble=True,
            callback=lambda *_: stamps.append(time.perf_counter()) and None,
        )
        jax.block_until_ready(result.model)
        fitted = time.perf_counter()
        fit_compile = timer.take()
        step_compile = step_timer.take()
        scores = mp.behaviour.compare_behaviour(
            data.teacher, result.model, data.test, ensemble=True
        )
        end = time.perf_counter()
    medians = {k: float(np.median(np.median(v, axis=1))) for k, v in scores.items()}
    compile_s = sum(step_compile.values())
    return record(
        "fly_fit",
        {
            "seeds": seeds,
            "n_train": 18,
            "n_test": 7,
            "trials": 240,
            "hidden": 10,
            "terms": 81,
            "solver": "levenberg_marquardt",
            "steps": steps,
            "dtype": "float32",
        },
        # The compile time of the one step program that the fit runs `steps` times.
        compile_s=compile_s,
        step_s=(fitted - generated - sum(fit_compile.values())) / steps,
        throughput={"end_to_end_s": end - start},
        generate_s=round(generated - start, 3),
        generate_compile_s=round(sum(generate_compile.values()), 3),
        fit_s=round(fitted - generated, 3),
        fit_compile_parts_s={k: round(v, 3) for k, v in step_compile.items()},
        fit_compile_other_s=round(sum(fit_compile.values()) - compile_s, 3),
        steady_step_s=round(float(np.median(np.diff(stamps)[1:])), 4),
        evaluate_s=round(end - fitted, 3),
        n_traces=result.n_traces,
        median_r2_weights=round(medians["r2_weights"], 4),
        median_percent_deviance=round(medians["percent_deviance"], 3),
        median_true_percent_deviance=round(medians["true_percent_deviance"], 3),
    )


def fly_fit() -> Iterator[dict]:
    """End-to-end wall time of the behavioural Taylor fit (`fly_protocol`), each
    configuration in a fresh Python process so that importing and compiling are counted;
    `process_s` is the whole child process, interpreter start and imports included."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # On a GPU this process may already hold most of the device's memory (JAX preallocates
    # it); the child allocates what it needs instead.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    code = (
        "import json, sys; from benchmarks._suite import fly_protocol; "
        "print(json.dumps(fly_protocol(int(sys.argv[1]))))"
    )
    for seeds in (1, 5):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code, str(seeds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        process_s = time.perf_counter() - start
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec["process_s"] = round(process_s, 3)
        yield rec


BENCHMARKS: dict[str, Callable[[], Iterator[dict]]] = {
    "ceiling": ceiling,
    "oja_forward": oja_forward,
    "oja_grad": oja_grad,
    "naive_baseline": naive_baseline,
    "scaling": scaling,
    "long_trajectory": long_trajectory,
    "devices": devices,
    "fly_fit": fly_fit,
}
