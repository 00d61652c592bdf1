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
    FIT_PROGRAMS,
    REPEATS,
    CompileTimer,
    coefficient_layer,
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
    with CompileTimer(FIT_PROGRAMS) as timer:
        result = mp.fit(
            layer,
            data,
            mp.losses.ActivityMSE(),
            solver=mp.Optax(optax.adam(1e-3)),
            steps=2,
            steps_per_call=1,  # each step timed on its own
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


def _straightforward_step(coefficients, eta: float):
    """One step of the layer as a JAX user writes it from the rule's definition: θ contracted
    with the powers of x by one einsum, then one matrix product per power of w brings in the
    powers of y (`p_c = Σ_b y^b ⊗ a[c, b]`), then Horner in w. `jax.checkpoint` makes the
    backward pass store only the weights of each step and recompute the rest."""
    exponents = jnp.arange(3)

    @jax.checkpoint
    def step(w, xs):
        x, valid = xs
        y = jax.nn.sigmoid(w @ x)
        a = jnp.einsum("abc,ia->cbi", coefficients, x[:, None] ** exponents)  # (3, 3, n_in)
        yp = y[:, None] ** exponents  # (n_out, 3)
        p0, p1, p2 = (yp @ a[c] for c in range(3))  # each (n_out, n_in)
        dw = p0 + w * (p1 + w * p2)
        return jnp.where(valid, w + eta * dw, w), y

    return step


def _one_einsum_step(coefficients, eta: float):
    """The same step with θ, the powers of x and the powers of y contracted by a single
    einsum into the three coefficient planes of w^0, w^1, w^2, then Horner in w."""
    exponents = jnp.arange(3)

    @jax.checkpoint
    def step(w, xs):
        x, valid = xs
        y = jax.nn.sigmoid(w @ x)
        p = jnp.einsum(
            "abc,ia,jb->cji", coefficients, x[:, None] ** exponents, y[:, None] ** exponents
        )
        dw = p[0] + w * (p[1] + w * p[2])
        return jnp.where(valid, w + eta * dw, w), y

    return step


def _materialising_step(coefficients, eta: float):
    """The same step building all 27 monomials `x^a y^b w^c` of every synapse,
    `(n_out, n_in, 3, 3, 3)`, and contracting them with θ (no checkpoint)."""
    exponents = jnp.arange(3)

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

    return step


def reference_value_and_grad(make_step: Callable = _straightforward_step, chunk: int = 10):
    """`(coefficients, data) -> (ActivityMSE, gradient)` written without the library:
    `make_step(θ, η)` is the scanned step, `jax.grad` differentiates through `lax.scan`, and
    the batch is taken `chunk` trajectories at a time (vmapped within a chunk), the chunks
    by a `lax.scan` that accumulates the value and the gradient, so that only one chunk's
    stored steps are alive."""

    def squared_error(coefficients, w0, inputs, mask, target, recorded):
        _, activity = jax.lax.scan(make_step(coefficients, 1.0), w0, (inputs, mask))
        valid = mask[:, None] & recorded[None, :]
        return jnp.sum(jnp.where(valid, activity - target, 0.0) ** 2)

    def chunk_value_and_grad(coefficients, arrays):
        total = lambda c: jnp.sum(jax.vmap(squared_error, (None, 0, 0, 0, 0, 0))(c, *arrays))
        return jax.value_and_grad(total)(coefficients)

    def value_and_grad(coefficients, data):
        arrays = (
            data.initial_weights,
            data.inputs,
            data.step_mask,
            data.activity,
            data.neuron_mask,
        )
        batch = arrays[0].shape[0]
        chunks = jax.tree.map(lambda a: a.reshape((batch // chunk, chunk) + a.shape[1:]), arrays)

        def accumulate(total, arrays):
            value, grad = chunk_value_and_grad(coefficients, arrays)
            return (total[0] + value, total[1] + grad), None

        zero = (jnp.zeros((), coefficients.dtype), jnp.zeros_like(coefficients))
        (value, grad), _ = jax.lax.scan(accumulate, zero, chunks)
        count = jnp.sum(data.step_mask[:, :, None] & data.neuron_mask[:, None, :])
        return value / count, grad / count

    return value_and_grad


def _timed_round_robin(fns: dict, args: tuple, repeats: int = REPEATS) -> dict:
    """Compile each `jax.jit(fn)` ahead of time and run it once, then time them in turn,
    repetition by repetition, so that a change in the machine's load affects them alike.
    Returns `{name: (compile_s, median step_s, last output)}`."""
    compiled, out = {}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - start
        out[name] = (compile_s, [], jax.block_until_ready(compiled[name](*args)))
    for _ in range(repeats):
        for name, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out[name][1].append(time.perf_counter() - start)
    return {name: (c, float(np.median(t)), o) for name, (c, t, o) in out.items()}


def naive_baseline() -> Iterator[dict]:
    """The library's gradient (`mp.TaylorReverse()`, the `oja_grad` path) against the same
    gradient written without the library, on the same data in one run, batch 50 and 1.

    The reference (`speedup_vs_straightforward` = its step time / this row's) is the fastest
    `straightforward` row of the same batch: the einsum step of `_straightforward_step`,
    `jax.grad` through `lax.scan`, the batch in chunks (of 10 and of 2 at batch 50; chunks of
    2 are the fastest found on 2 CPU cores). Also at batch 1: the same with all of θ and the
    powers of x and y in one einsum (`straightforward_one_einsum`), the implementation that
    builds all 27 monomials of every synapse (`materialising_monomials`, the baseline of
    earlier versions of this suite; a batch of 50 would not fit in memory), and plain
    `jax.grad` through the library's factorised simulation (`library_autodiff`,
    `mp.ReverseMode()`). Every gradient is compared with the reference's."""
    theta = student_rule().coefficients
    library = coefficient_value_and_grad(mp.TaylorReverse())
    groups = {
        50: {
            ("straightforward", 10): reference_value_and_grad(_straightforward_step, 10),
            ("straightforward", 2): reference_value_and_grad(_straightforward_step, 2),
            ("library", None): library,
        },
        1: {
            ("straightforward", 1): reference_value_and_grad(_straightforward_step, 1),
            ("straightforward_one_einsum", 1): reference_value_and_grad(_one_einsum_step, 1),
            ("materialising_monomials", 1): reference_value_and_grad(_materialising_step, 1),
            ("library_autodiff", None): coefficient_value_and_grad(mp.ReverseMode()),
            ("library", None): library,
        },
    }
    for batch, fns in groups.items():
        data = oja_dataset(batch, LENGTH)
        out = _timed_round_robin(fns, (theta, data))
        reference = min((k for k in out if k[0] == "straightforward"), key=lambda k: out[k][1])
        ref_step, ref_grad = out[reference][1], np.asarray(out[reference][2][1])
        for (impl, chunk), (compile_s, step_s, (_, grad)) in out.items():
            grad = np.asarray(grad)
            config = {"impl": impl, "batch": batch, "T": LENGTH, **LAYER}
            if chunk is not None:
                config["chunk"] = chunk
            yield record(
                "naive_baseline",
                config,
                compile_s=compile_s,
                step_s=step_s,
                throughput=_throughput(data, step_s),
                reference=(impl, chunk) == reference,
                speedup_vs_straightforward=round(ref_step / step_s, 2),
                grad_rel_diff_vs_straightforward=float(
                    np.max(np.abs(grad - ref_grad)) / np.max(np.abs(ref_grad))
                ),
            )


def _as_recording(data: mp.data.ActivityDataset) -> mp.data.RecordingDataset:
    """The same trajectories as a `RecordingDataset` (the weights as the initial state)."""
    return mp.data.RecordingDataset(
        data.inputs, data.activity, data.initial_weights, rewards=data.rewards
    )


def zoo() -> Iterator[dict]:
    """The model zoo's generic path against the single-layer path, on the same 100 → 1000
    layer and data in one run (batch 50, T = 50): the forward loss of `ActivityMSE` on a
    `PlasticDense` and of `RecordingLoss` on `Model(PlasticDense, GaussianHead())` (the same
    scan, `mp.simulate_network`), and the gradient each gets inside `fit` (`Automatic`: the
    hand-written reverse pass for both), with plain reverse mode through the generic scan
    for context. Then the gradient throughput of a recurrent network,
    `PlasticRecurrent` of 300 tanh units driven by 100 inputs (9·10⁴ plastic synapses),
    batch 50, T = 50, by reverse mode through the scan, plain and checkpointed per step
    (`automatic_picks` marks the one `Automatic` chooses)."""
    batch = 50
    data = oja_dataset(batch, LENGTH)
    recording = _as_recording(data)
    theta = student_rule().coefficients
    head = mp.nn.GaussianHead()
    rec_loss = mp.losses.RecordingLoss()

    def model(coefficients):
        return mp.nn.Model(coefficient_layer(coefficients), head)

    def generic_forward(coefficients, d):
        return rec_loss(model(coefficients), d)

    def generic_grad(strategy):
        def fn(coefficients, d):
            m = model(coefficients)
            params, static = eqx.partition(m, mp.rule_filter_spec(m))
            value, grads = strategy.value_and_grad(rec_loss, params, static, d)
            return value, grads.network.rule.coefficients

        return fn

    single_forward, single_grad = coefficient_loss(), coefficient_value_and_grad()
    # Each pair is timed in turn in one run; every function takes both datasets (the same
    # arrays) and uses its own.
    out = {}
    pairs = {
        "forward": {
            "single_layer": lambda c, d, r: single_forward(c, d),
            "generic": lambda c, d, r: generic_forward(c, r),
        },
        "gradient": {
            "single_layer": lambda c, d, r: single_grad(c, d),
            "generic": lambda c, d, r: generic_grad(mp.Automatic())(c, r),
            "generic_reverse_mode": lambda c, d, r: generic_grad(mp.ReverseMode())(c, r),
        },
    }
    for kind, fns in pairs.items():
        for impl, timed in _timed_round_robin(fns, (theta, data, recording)).items():
            out[(kind, impl)] = timed
    for (kind, impl), (compile_s, step_s, value) in out.items():
        other = out[(kind, "single_layer")]
        v = np.asarray(value[0] if kind == "gradient" else value)
        ref = np.asarray(other[2][0] if kind == "gradient" else other[2])
        yield record(
            "zoo",
            {"what": kind, "impl": impl, "batch": batch, "T": LENGTH, **LAYER},
            compile_s=compile_s,
            step_s=step_s,
            throughput=_throughput(data, step_s),
            time_vs_single_layer=round(step_s / other[1], 3),
            loss_rel_diff_vs_single_layer=float(abs(v - ref) / abs(ref)),
        )

    n, n_in = 300, N_IN
    network = mp.nn.PlasticRecurrent(
        mp.TaylorRule(theta, ("x", "y", "w")), n_in, n, eta=0.01, weight_bound=2.0
    )
    truth = mp.nn.Model(eqx.tree_at(lambda m: m.rule, network, mp.rules.oja()), head)
    k_x, k_d = jr.split(jr.key(3))
    x = mp.tasks.gaussian_stimuli(n_in, LENGTH, n_trajectories=batch, std=1.0, key=k_x)
    rec_data, _ = mp.generate_recordings(truth, x.astype(jnp.float32), key=k_d)

    def recurrent_grad(strategy):
        def fn(coefficients, d):
            m = eqx.tree_at(lambda n: n.rule.coefficients, network, coefficients)
            m = mp.nn.Model(m, head)
            params, static = eqx.partition(m, mp.rule_filter_spec(m))
            value, grads = strategy.value_and_grad(rec_loss, params, static, d)
            return value, grads.network.rule.coefficients

        return fn

    chosen = mp.Automatic().choose(rec_loss, truth, rec_data, jacobian=False)
    strategies = {"reverse": mp.ReverseMode(), "reverse_checkpointed": mp.ReverseMode(True)}
    fns = {name: recurrent_grad(s) for name, s in strategies.items()}
    for name, (compile_s, step_s, _) in _timed_round_robin(fns, (theta, rec_data)).items():
        config = {"what": "gradient", "impl": f"recurrent_{name}", "batch": batch, "T": LENGTH}
        yield record(
            "zoo",
            {**config, "n": n, "n_in": n_in, "activation": "tanh", "terms": 27},
            compile_s=compile_s,
            step_s=step_s,
            throughput={"synapse_steps_per_s": batch * LENGTH * n * n / step_s},
            automatic_picks=strategies[name] == chosen,
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


def _choice_protocol(
    name: str,
    config: dict,
    *,
    seeds: int,
    solver: mp.AbstractSolver,
    steps: int,
    l1: float,
    batch_size: int | None = None,
    students: Callable | None = None,
    steps_per_call: int | None = None,
) -> tuple[dict, dict]:
    """Generate `seeds` × (18 training + 7 held-out) trajectories of 240 trials from the rule
    `x*r` (`mp.behaviour.recovery_data`), fit the 81-coefficient Taylor rule with L1 by
    `steps` steps of `solver` (all seeds vmapped; by default the students and keys of
    `mp.behaviour.recover_rule`, or `students(seeds, key)`), score it on the held-out
    trajectories, in this process.
    Returns the result record and what else the caller may need (the data and the fit).

    `fit` compiles one program (its jitted `run_step`, or `run_steps` for several steps per
    call, traced once) and calls it from the host, so `compile_s` is JAX's own compile time
    of that program (tracing, lowering, XLA); whatever else compiles in the fit phase
    (drawing the initial students, the solver's initial state, small array operations;
    mostly the draws) is `fit_compile_other_s`. `step_s` is the fit's wall time less
    everything compiled in it, per step. With one step per call, each step is also timed by
    a callback: `first_step_s`, and `steady_step_s` the median wall time of the steps after
    the first (with several per call, the callback would see them in bursts and its own
    cost would be counted; they are `None` then)."""
    # One step per call when the caller or the solver says so: then each step is timed.
    timed = (solver.default_steps_per_call if steps_per_call is None else steps_per_call) == 1
    k_data, k_fit = jr.split(jr.key(0))
    with CompileTimer() as timer, CompileTimer(FIT_PROGRAMS) as step_timer:
        start = time.perf_counter()
        # One fresh draw of the input noise at variance 0.005: the protocol these rows and
        # their targets were set on. The library's default since, the marginal likelihood
        # over 8 draws at 0.015, costs about 8× per step (examples/results/reward_rule.md).
        data = mp.behaviour.recovery_data(
            mp.rules.reward_modulated(),
            seeds=seeds,
            input_variance=0.005,
            draws=None,
            key=k_data,
        )
        generated = time.perf_counter()
        generate_compile = timer.take()
        step_timer.take()
        # What `recover_rule(data=data, key=jr.key(0))` fits (its key splits are mirrored
        # here), called directly so that the fit and the scoring are timed apart.
        k_init, k_batches = jr.split(k_fit)
        if students is None:
            rules = mp.behaviour.stack_rules(
                lambda k: mp.behaviour.taylor_student(key=k), jr.split(k_init, seeds)
            )
        else:
            rules = students(seeds, k_init)
        stamps = [time.perf_counter()]
        result = mp.fit(
            data.teacher.with_rule(rules),
            data.train,
            mp.behaviour.ChoiceBCE(),
            solver=solver,
            steps=steps,
            batch_size=batch_size,
            penalty=mp.losses.L1(l1),
            key=k_batches,
            progress=False,
            ensemble=True,
            steps_per_call=steps_per_call,
            callback=(lambda *_: stamps.append(time.perf_counter()) and None) if timed else None,
        )
        jax.block_until_ready(result.model)
        fitted = time.perf_counter()
        fit_compile = timer.take()
        step_compile = step_timer.take()
        scores = mp.behaviour.compare_behaviour(
            data.teacher, result.model, data.test, ensemble=True
        )
        end = time.perf_counter()
        evaluate_compile = timer.take()
    medians = {k: float(np.median(np.median(v, axis=1))) for k, v in scores.items()}
    compile_s = sum(step_compile.values())
    step_walls = np.diff(stamps)
    rec = record(
        name,
        {
            "seeds": seeds,
            "n_train": 18,
            "n_test": 7,
            "trials": 240,
            "hidden": 10,
            "terms": 81,
            **config,
            "steps": steps,
            # `fit`'s default when None: as many as take about 0.25 s, at most the solver's
            # default_steps_per_call.
            "steps_per_call": (
                steps_per_call
                if steps_per_call is not None
                else (1 if timed else f"auto, ≤ {solver.default_steps_per_call}")
            ),
            "l1": l1,
            "dtype": "float32",
        },
        # The compile time of the one step program that the fit runs `steps` times.
        compile_s=compile_s,
        step_s=(fitted - generated - sum(fit_compile.values())) / steps,
        throughput={"end_to_end_s": end - start},
        compile_cache=bool(jax.config.jax_enable_compilation_cache),
        generate_s=round(generated - start, 3),
        generate_compile_s=round(sum(generate_compile.values()), 3),
        fit_s=round(fitted - generated, 3),
        fit_compile_parts_s={k: round(v, 3) for k, v in step_compile.items()},
        fit_compile_other_s=round(sum(fit_compile.values()) - compile_s, 3),
        first_step_s=round(float(step_walls[0]), 3) if len(step_walls) else None,
        steady_step_s=round(float(np.median(step_walls[1:])), 5) if len(step_walls) > 1 else None,
        evaluate_s=round(end - fitted, 3),
        evaluate_compile_s=round(sum(evaluate_compile.values()), 3),
        n_traces=result.n_traces,
        median_r2_weights=round(medians["r2_weights"], 4),
        median_percent_deviance=round(medians["percent_deviance"], 3),
        median_true_percent_deviance=round(medians["true_percent_deviance"], 3),
    )
    return rec, {"data": data, "result": result}


def fly_protocol(seeds: int, chunks: int | None = None) -> dict:
    """The `examples/reward_rule.py` Taylor protocol (`_choice_protocol`): 12
    Levenberg–Marquardt steps on every training trajectory, L1 1e-3. `chunks`: the solver's
    (default: its own choice; on a CPU 6 groups of 3 trajectories per seed here)."""
    rec, _ = _choice_protocol(
        "fly_fit",
        {"solver": "levenberg_marquardt", "jacobian_chunks": "auto" if chunks is None else chunks},
        seeds=seeds,
        solver=mp.LevenbergMarquardt(chunks=chunks),
        steps=12,
        l1=1e-3,
    )
    return rec


PAPER_EPOCHS = 350


def paper_protocol_run(epochs: int = PAPER_EPOCHS, steps_per_call: int | None = None) -> dict:
    """The NeurIPS 2024 fly experiment as its authors run it (`_choice_protocol`, one seed):
    350 epochs of Adam (learning rate 1e-3) over the 18 training trajectories, one
    trajectory per step (18 × 350 = 6300 steps, as their training loop takes one Adam step
    per trajectory; `fit` draws each step's trajectory at random rather than in epoch
    order), with L1 weight 5e-2 (their default) on the 81 coefficients, then the 7 held-out
    trajectories scored. The student is drawn on the host (`mp.behaviour.taylor_students`),
    which compiles nothing. `steps_per_call`: `fit`'s (default: `fit`'s own, as many Adam
    steps per call of the compiled program as take about 0.25 s, at most 100). Also times the step's gradient alone (`ChoiceBCE`
    and L1 of one trajectory, `Automatic` differentiation, compiled ahead of time) against
    the fit's wall time per step: the rest is the Adam update, the minibatch draw and `fit`'s
    host loop around its compiled program."""
    n_train = 18
    steps = epochs * n_train
    rec, extra = _choice_protocol(
        "paper_protocol",
        {"solver": "adam", "learning_rate": 1e-3, "epochs": epochs, "batch_size": 1},
        seeds=1,
        solver=mp.Optax(optax.adam(1e-3)),
        steps=steps,
        l1=5e-2,
        batch_size=1,
        students=lambda seeds, key: mp.behaviour.taylor_students(seeds, key=key),
        steps_per_call=steps_per_call,
    )
    # The compiled gradient of one training trajectory alone (what one step computes).
    model = extra["result"].model
    one = jax.tree.map(lambda a: a[0, :1] if eqx.is_array(a) else a, extra["data"].train)
    first = lambda a: a[0] if eqx.is_array(a) else a
    member = extra["data"].teacher.with_rule(jax.tree.map(first, model.rule))
    params, static = eqx.partition(member, mp.rule_filter_spec(member))
    loss, penalty = mp.behaviour.ChoiceBCE(), mp.losses.L1(5e-2)

    def value_and_grad(params, batch):
        value, grad = mp.Automatic().value_and_grad(loss, params, static, batch)
        pen, pgrad = jax.value_and_grad(lambda p: penalty(eqx.combine(p, static)))(params)
        return value + pen, jax.tree.map(lambda a, b: a + b, grad, pgrad)

    # Many repetitions: one call takes a few milliseconds, so a few would be noise.
    _, grad_s, _ = time_compiled(value_and_grad, params, one, repeats=300)
    rec["gradient_only_s"] = round(grad_s, 6)
    rec["besides_gradient_per_step_s"] = round(rec["step_s"] - grad_s, 6)
    return rec


def _in_fresh_process(call: str) -> dict:
    """Run `call` (an expression in `benchmarks._suite` returning a record) in a fresh Python
    process with JAX's persistent compilation cache off, so that importing and compiling are
    counted cold; adds `process_s`, the whole child process, interpreter start and imports
    included."""
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
        "import json; import metaplastic as mp; mp.runs.disable_compile_cache(); "
        "from benchmarks import _suite; "
        f"print(json.dumps(_suite.{call}))"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, check=True
    )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["process_s"] = round(time.perf_counter() - start, 3)
    return rec


def fly_fit() -> Iterator[dict]:
    """End-to-end wall time of the behavioural Taylor fit (`fly_protocol`), 1 and 5 seeds,
    each in a fresh Python process with a cold compilation cache (`_in_fresh_process`); and
    5 seeds with the Jacobian of all 18 trajectories of a seed taken at once (`chunks=1`),
    for comparison with the solver's default grouping."""
    for seeds, chunks in ((1, None), (5, None), (5, 1)):
        yield _in_fresh_process(f"fly_protocol({seeds}, chunks={chunks})")


def paper_protocol() -> Iterator[dict]:
    """End-to-end wall time of the authors' protocol (`paper_protocol_run`) in a fresh Python
    process with a cold compilation cache (`_in_fresh_process`): with `fit`'s default number
    of Adam steps per call of its compiled program (as many as take about 0.25 s, at most
    100), and with one step per call for comparison."""
    yield _in_fresh_process("paper_protocol_run()")
    yield _in_fresh_process("paper_protocol_run(steps_per_call=1)")


BENCHMARKS: dict[str, Callable[[], Iterator[dict]]] = {
    "ceiling": ceiling,
    "oja_forward": oja_forward,
    "oja_grad": oja_grad,
    "naive_baseline": naive_baseline,
    "zoo": zoo,
    "scaling": scaling,
    "long_trajectory": long_trajectory,
    "devices": devices,
    "fly_fit": fly_fit,
    "paper_protocol": paper_protocol,
}
