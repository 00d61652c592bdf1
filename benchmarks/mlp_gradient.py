"""Time one gradient of the activity loss of an MLP-rule layer by each differentiation strategy.

The setting of `examples/recover_oja.py --rule mlp` (Oja teacher, sigmoid layer, inputs
N(0, 0.1²), initial weights N(0, 0.01²), a width-10 MLP rule over (x, y, w): 51 parameters,
float64), at a size of your choice. For each strategy: the first call (compilation included),
the best of two further calls, the loss, the largest difference from the first strategy's
gradient (relative to its largest entry) and the process's peak memory so far.

    python -m benchmarks.mlp_gradient --n-out 1000 --trajectories 1
    python -m benchmarks.mlp_gradient --n-out 200 --trajectories 5 --strategies reverse_ckpt,forward
"""

import argparse
import json
import resource
import time


STRATEGIES = ("reverse_ckpt", "reverse_seg7", "reverse", "forward")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-in", type=int, default=100)
    p.add_argument("--n-out", type=int, default=1000)
    p.add_argument("--length", type=int, default=50)
    p.add_argument("--trajectories", type=int, default=1)
    p.add_argument("--strategies", default="reverse_ckpt,reverse_seg7,reverse")
    args = p.parse_args(argv)
    names = args.strategies.split(",")
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        p.error(f"--strategies: unknown {unknown}; choose from {', '.join(STRATEGIES)}")

    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    import metaplastic as mp

    k_x, k_w, k_obs, k_init = jr.split(jr.key(0), 4)
    teacher = mp.nn.PlasticDense(mp.rules.oja(("x", "y", "w")), eta=1.0, activation="sigmoid")
    inputs = mp.tasks.gaussian_stimuli(
        args.n_in, args.length, n_trajectories=args.trajectories, std=0.1, key=k_x
    )
    w0 = 0.01 * jr.normal(k_w, (args.trajectories, args.n_out, args.n_in))
    data, _ = mp.generate_activity(teacher, inputs, w0, key=k_obs)
    rule = mp.MLPRule(("x", "y", "w"), key=k_init)
    student = mp.nn.PlasticDense(rule, eta=1.0, activation="sigmoid")
    params, static = eqx.partition(student, mp.rule_filter_spec(student))
    loss = mp.losses.ActivityMSE()
    strategies = {
        "reverse_ckpt": mp.ReverseMode(checkpoint=True),
        "reverse_seg7": mp.ReverseMode(checkpoint=7),
        "reverse": mp.ReverseMode(),
        "forward": mp.ForwardMode(),
    }
    rows, reference = [], None
    for name in names:
        strategy = strategies[name]
        fn = eqx.filter_jit(lambda p, d, s=strategy: s.value_and_grad(loss, p, static, d))
        t = time.perf_counter()
        value, grads = jax.block_until_ready(fn(params, data))
        first = time.perf_counter() - t
        times = []
        for _ in range(2):
            t = time.perf_counter()
            value, grads = jax.block_until_ready(fn(params, data))
            times.append(time.perf_counter() - t)
        flat = jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(grads)])
        reference = flat if reference is None else reference
        diff = float(jnp.max(jnp.abs(flat - reference)) / jnp.max(jnp.abs(reference)))
        row = {
            "strategy": name,
            "first_s": round(first, 3),
            "gradient_s": round(min(times), 3),
            "loss": float(value),
            "relative_difference": diff,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        }
        print(row, flush=True)
        rows.append(row)
    print(json.dumps({**vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
