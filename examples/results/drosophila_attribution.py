"""Is the sign of the fitted forgetting term a property of the data? Simulated flies learn by
a rule with a true forgetting term (Δw = x·r − 0.1·w, so w < 0) in the published task (three
blocks of 80 trials, reward probabilities (0.2, 0.8), (0.9, 0.1), (0.2, 0.8)). They are
written as per-fly .mat files twice: complete, and as the shared conversion of the real
flies is (blocks 2 and 3 keep only their accepted presentations: no rejection after block
1). Both are fitted with the library protocol of `examples/drosophila.py` (covariance,
forgetting and forgetting_y; no held-out sweep), and the fitted `w` and `y` are compared.

    python examples/results/drosophila_attribution.py [--flies 8] [--seed 0]

Prints one JSON object.
"""

import argparse
import json
import pathlib
import tempfile
import time

import jax.random as jr
import numpy as np

import metaplastic as mp


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flies", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    truth = mp.TaylorRule.from_expression("x*r - 0.1*w", factors=("x", "y", "w", "r"), order=1)
    task = mp.behaviour.OperantTask(((0.2, 0.8), (0.9, 0.1), (0.2, 0.8)), 80)
    teacher = mp.behaviour.MushroomBody(truth, key=jr.key(args.seed))
    encoding = mp.behaviour.OdourEncoding(2, variance=0.015**2, key=jr.key(args.seed + 1))
    generated = mp.behaviour.generate_behaviour(
        teacher, task, encoding, args.flies, key=jr.key(args.seed + 2)
    )
    out = {"truth": truth.to_expression(), "flies": args.flies}
    for name, accept_only in (("complete", False), ("accept_only_after_block1", True)):
        with tempfile.TemporaryDirectory() as tmp:
            folder = pathlib.Path(tmp)
            # The shared conversion of the recordings keeps rejections in block 1 only.
            mp.flies.save_drosophila(
                generated.data, folder, accepted_only_from=80 if accept_only else None
            )
            data = mp.flies.load_drosophila(folder)
            fits = mp.flies.fit_families(
                data,
                ("covariance", "forgetting", "forgetting_y"),
                resamples=4,
                fractions=(),
                input_variance=0.015**2,
                init_scale=1e-5,
                steps=8,
                key=jr.key(args.seed + 3),
            )
        cov, fgt, fy = fits["covariance"], fits["forgetting"], fits["forgetting_y"]
        rejections = [int(f.n_rejections) for f in data.flies]
        out[name] = {
            "rejections_per_fly_median": float(np.median(rejections)),
            "median_w": float(np.median(fgt.coefficients["w"])),
            "w_negative": int(np.sum(fgt.coefficients["w"] < 0)),
            "median_w_block1": float(np.median(fgt.block1_coefficients["w"])),
            "w_negative_block1": int(np.sum(fgt.block1_coefficients["w"] < 0)),
            "median_y": float(np.median(fy.coefficients["y"])),
            "y_negative": int(np.sum(fy.coefficients["y"] < 0)),
            "median_x*r": float(np.median(fgt.coefficients["x*r"])),
            "forgetting_improves_in_sample": int(np.sum(fgt.in_sample > cov.in_sample)),
            "forgetting_y_improves_in_sample": int(np.sum(fy.in_sample > cov.in_sample)),
            "median_in_sample": {
                "covariance": float(np.median(cov.in_sample)),
                "forgetting": float(np.median(fgt.in_sample)),
                "forgetting_y": float(np.median(fy.in_sample)),
            },
        }
    out["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
