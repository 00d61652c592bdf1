"""Levenberg–Marquardt step time: the QR solve against the normal equations, in one A/B run.

The fit of `examples/recover_oja.py` (Taylor rule over (x, y, w), batches of 5 trajectories,
the Jacobian one trajectory at a time) is run for `--steps` steps with
`mp.LevenbergMarquardt(linear_solver="qr")` and with `"normal"`, alternating `--rounds`
times so that both see the same machine load. One JSON line per fit: the wall time of each
step after the first (the first compiles), and at the end one line with the median and the
smallest step time of each solver, the median CPU time of a step (process time, all
threads: less sensitive to other jobs on a shared machine), and their ratios.

    python -m benchmarks.lm_linear_solver                 # 100 -> 1000, float32
    python -m benchmarks.lm_linear_solver --float64
    python -m benchmarks.lm_linear_solver --quick         # 20 -> 50
"""

import argparse
import json
import statistics
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a 20 → 50 layer")
    p.add_argument("--float64", action="store_true", help="fit in float64 (default float32)")
    p.add_argument("--steps", type=int, default=6, help="steps per fit (default 6)")
    p.add_argument("--rounds", type=int, default=2, help="A/B rounds (default 2)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    import jax.random as jr

    import metaplastic as mp

    n_in, n_out = (20, 50) if args.quick else (100, 1000)
    k_x, k_w, k_obs, k_init = jr.split(jr.key(0), 4)
    teacher = mp.nn.PlasticDense(mp.rules.oja(("x", "y", "w")), eta=1.0, activation="sigmoid")
    inputs = mp.tasks.gaussian_stimuli(n_in, 50, n_trajectories=50, std=0.1, key=k_x)
    w0 = 0.01 * jr.normal(k_w, (50, n_out, n_in))
    data, _ = mp.generate_activity(teacher, inputs, w0, key=k_obs)
    rule = mp.TaylorRule.random(("x", "y", "w"), scale=1e-4, key=k_init)
    student = mp.nn.PlasticDense(rule, eta=1.0, activation="sigmoid")

    times = {"qr": [], "normal": []}
    cpu = {"qr": [], "normal": []}
    for _ in range(args.rounds):
        for solver in times:
            stamps, cpu_stamps = [], []
            mp.fit(
                student,
                data,
                mp.losses.ActivityMSE(),
                solver=mp.LevenbergMarquardt(chunks=5, linear_solver=solver),
                steps=args.steps,
                batch_size=5,
                progress=False,
                callback=lambda *a, s=stamps, c=cpu_stamps: (
                    (
                        s.append(time.perf_counter()),
                        c.append(time.process_time()),
                    )
                    and None
                ),
                key=k_init,
            )
            steps = [b - a for a, b in zip(stamps, stamps[1:])]
            cpu_steps = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])]
            times[solver] += steps
            cpu[solver] += cpu_steps
            print(json.dumps({"linear_solver": solver, "step_s": steps, "cpu_s": cpu_steps}))
    median = {k: statistics.median(v) for k, v in times.items()}
    fastest = {k: min(v) for k, v in times.items()}
    cpu_median = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        json.dumps(
            {
                "n_in": n_in,
                "n_out": n_out,
                "dtype": "float64" if args.float64 else "float32",
                "median_step_s": median,
                "min_step_s": fastest,
                "qr_over_normal_median": median["qr"] / median["normal"],
                "qr_over_normal_min": fastest["qr"] / fastest["normal"],
                "median_cpu_s": cpu_median,
                "qr_over_normal_cpu": cpu_median["qr"] / cpu_median["normal"],
            }
        )
    )


if __name__ == "__main__":
    main()
