"""Timing, memory and machine facts shared by the benchmarks."""

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import metaplastic as mp


REPEATS = 5  # steady-state repetitions per configuration (the median is reported)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if platform.system() != "Darwin" else kib / 2**20


def device_facts() -> dict:
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "n_devices": len(devices),
    }


def machine_facts() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    facts = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "platform": platform.platform(),
    }
    try:
        facts["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return facts


def time_compiled(fn: Callable, *args, repeats: int = REPEATS) -> tuple[float, float, object]:
    """Compile `jax.jit(fn)` ahead of time, run it once to warm up, then `repeats` times.

    **Returns:**

    `(compile_s, median step_s, last output)`; every run is waited for with
    `jax.block_until_ready`.
    """
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times), out


def record(name: str, config: dict, *, compile_s, step_s, throughput: dict, **extra) -> dict:
    """One JSON-ready result line."""
    out = {
        "name": name,
        "config": config,
        "compile_s": None if compile_s is None else round(compile_s, 4),
        "step_s": None if step_s is None else round(step_s, 6),
    }
    out.update({k: (round(v, 1) if isinstance(v, float) else v) for k, v in throughput.items()})
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out.update(device_facts())
    out.update(extra)
    return out


def oja_dataset(
    batch: int,
    length: int,
    n_in: int = 100,
    n_out: int = 1000,
    *,
    dtype=jnp.float32,
    key=jr.key(0),
) -> mp.data.ActivityDataset:
    """Activity of a 100 → 1000 sigmoid layer learning by Oja's rule (`x*y - y^2*w`) from
    Gaussian inputs; no weight trajectories are kept (they would take batch · T matrices)."""
    k_x, k_w = jr.split(key)
    teacher = mp.nn.PlasticDense(mp.rules.oja(), eta=1.0)
    inputs = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=batch, key=k_x).astype(dtype)
    w0 = (0.01 * jr.normal(k_w, (batch, n_out, n_in))).astype(dtype)
    simulate = jax.jit(jax.vmap(lambda w, x: mp.simulate(teacher, w, x).activity))
    activity = simulate(w0, inputs)
    return mp.data.ActivityDataset(inputs, activity, w0)


def synapse_steps(data: mp.data.ActivityDataset) -> int:
    batch, length, n_in = data.inputs.shape
    return batch * length * n_in * data.activity.shape[2]


def student_rule(dtype=jnp.float32) -> mp.TaylorRule:
    """The 27-term rule over (x, y, w) that a fit starts from (small random coefficients)."""
    return mp.TaylorRule((1e-3 * jr.normal(jr.key(1), (3, 3, 3))).astype(dtype), ("x", "y", "w"))


def coefficient_layer(coefficients) -> mp.nn.PlasticDense:
    """A sigmoid `PlasticDense` layer (η = 1) with the 27-term rule `coefficients`."""
    return mp.nn.PlasticDense(mp.TaylorRule(coefficients, ("x", "y", "w")), eta=1.0)


def coefficient_loss() -> Callable:
    """`(coefficients, data) -> ActivityMSE` of a sigmoid `PlasticDense` layer (η = 1): the
    value of the loss alone (the plain simulation scan)."""

    def loss(coefficients, data):
        return mp.losses.ActivityMSE()(coefficient_layer(coefficients), data)

    return loss


def coefficient_value_and_grad(
    differentiation: mp.AbstractDifferentiation | None = None,
) -> Callable:
    """`(coefficients, data) -> (ActivityMSE, its gradient with respect to the coefficients)`,
    taken the way `differentiation` takes it inside `fit` (default `mp.TaylorReverse()`,
    the library's hand-written reverse pass, which `fit` picks for this loss and a
    first-order solver; `mp.ReverseMode()` is `jax.grad` through the plain scan)."""
    if differentiation is None:
        differentiation = mp.TaylorReverse()

    def value_and_grad(coefficients, data):
        layer = coefficient_layer(coefficients)
        params, static = eqx.partition(layer, mp.rule_filter_spec(layer))
        value, grads = differentiation.value_and_grad(mp.losses.ActivityMSE(), params, static, data)
        return value, grads.rule.coefficients

    return value_and_grad


# The programs `mp.fit` compiles: one step per call, or several (`steps_per_call`).
FIT_PROGRAMS = ("run_step", "run_steps")


class CompileTimer:
    """JAX's own timings of tracing, lowering and XLA compilation (its `jax.monitoring`
    events), summed while the timer is entered; with `name` (one name or several), only those
    of those functions (e.g. `run_step` and `run_steps`, the step functions `fit` jits)."""

    EVENTS = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "xla",
    }

    def __init__(self, name: str | tuple[str, ...] | None = None):
        names = (name,) if isinstance(name, str) else name
        self.names = None if names is None else {f for n in names for f in (n, f"jit({n})")}
        self.seconds = dict.fromkeys(self.EVENTS.values(), 0.0)

    def _listen(self, event: str, duration: float, **meta) -> None:
        if event in self.EVENTS and (self.names is None or meta.get("fun_name") in self.names):
            self.seconds[self.EVENTS[event]] += duration

    def __enter__(self) -> "CompileTimer":
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *_) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)

    def take(self) -> dict:
        """The seconds summed so far, per phase; starts the sums again from zero."""
        out = dict(self.seconds)
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return out


def loglog_slope(x, y) -> float:
    """The slope of `log y` against `log x` (least squares)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])
