"""Time the closed-loop generation of behaviour: 18 trajectories of 240 trials (the issue's
target is under 2 s after compilation).

    python benchmarks/generate_behaviour.py
    python benchmarks/generate_behaviour.py --trajectories 100 --repeats 10
"""

import argparse
import json
import time


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trajectories", type=int, default=18)
    p.add_argument("--trials-per-block", type=int, default=80)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    import jax
    import jax.random as jr

    import metaplastic as mp

    task = mp.behaviour.OperantTask(block_lengths=args.trials_per_block)
    encoding = mp.behaviour.OdourEncoding(2, key=jr.key(0))
    network = mp.behaviour.MushroomBody(mp.rules.reward_modulated(), key=jr.key(1))

    def generate(seed):
        g = mp.behaviour.generate_behaviour(
            network, task, encoding, args.trajectories, key=jr.key(seed)
        )
        jax.block_until_ready(g)
        return g

    start = time.perf_counter()
    generate(0)
    first = time.perf_counter() - start
    times = []
    for seed in range(1, args.repeats + 1):
        start = time.perf_counter()
        generate(seed)
        times.append(time.perf_counter() - start)
    result = {
        "trajectories": args.trajectories,
        "trials": task.n_trials,
        "first_call_seconds": round(first, 3),
        "seconds_after_compile": [round(t, 3) for t in times],
        "median_seconds_after_compile": round(sorted(times)[len(times) // 2], 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
