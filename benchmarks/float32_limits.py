"""Where float32 loses Oja's rule: the linear solve, the Jacobian, or the objective.

The setting of `examples/recover_oja.py` (a sigmoid layer driven by Gaussian inputs of std
0.1, initial weights of std 0.01, 50 steps; one batch of 5 trajectories, the batch of one
Levenberg–Marquardt step). The same float32 inputs and initial weights are simulated in
float64 and in float32, and the activity Jacobian `J` of the 27 Taylor coefficients is
taken in both at the same points (Oja's rule `θ*`, and `θ*` plus a small perturbation):

- the linear solve: the singular values of `J` (with and without unit-norm columns), hence
  which directions the normal equations `JᵀJ` lose in float32 (`σᵢ² < ε₃₂ σ₁²`);
- the Jacobian: the float32 error of `J` along each singular direction, relative to `σᵢ`;
- the objective: the float32 rounding of the simulated activity (float32 minus float64
  predictions at the same `θ`), the loss floor it sets, the loss change that a move of 0.02
  along each weak direction makes (what the step's acceptance test would have to see), and
  the coefficient error that this rounding alone puts into the least-squares solution
  (`J⁺ · rounding`), direction by direction;
- one Gauss–Newton step from the perturbed point, solved in float64, by float32 normal
  equations and by a float32 QR of `J`, and how far each lands from `θ*`.

    python -m benchmarks.float32_limits           # 100 -> 1000, as recover_oja.py
    python -m benchmarks.float32_limits --quick   # 20 -> 50

The last line printed is one JSON object with every number.
"""

import argparse
import json
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a 20 → 50 layer (recover_oja --quick)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--length", type=int, default=50, help="time steps")
    p.add_argument("--batch", type=int, default=5, help="trajectories in J")
    p.add_argument(
        "--perturbation",
        type=float,
        default=1e-5,
        help="std of the perturbation of θ* the Gauss-Newton step starts from",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    n_in, n_out = (20, 50) if args.quick else (100, 1000)
    truth = mp.rules.oja(("x", "y", "w"))
    loss = mp.losses.ActivityMSE()

    with jax.enable_x64(False):  # the float32 draws of recover_oja.py --float32
        k_x, k_w, *_ = jr.split(jr.key(args.seed), 6)
        inputs = mp.tasks.gaussian_stimuli(
            n_in, args.length, n_trajectories=args.batch, std=0.1, key=k_x
        )
        inputs = np.asarray(inputs)
        w0 = np.asarray(0.01 * jr.normal(k_w, (args.batch, n_out, n_in)))

    def setup(x64):
        # The same inputs and initial weights, simulated in the given precision.
        dtype = jnp.float64 if x64 else jnp.float32

        def predictions(theta, data):
            rule = mp.rules.oja(("x", "y", "w"))
            rule = eqx.tree_at(lambda r: r.coefficients, rule, theta.reshape(3, 3, 3))
            layer = mp.nn.PlasticDense(rule, eta=1.0, activation="sigmoid")
            (obs,) = loss.observe(layer, data)
            return obs.predictions.reshape(-1), obs.targets.reshape(-1)

        def at(theta):
            with jax.enable_x64(x64):
                teacher = mp.nn.PlasticDense(
                    eqx.tree_at(
                        lambda r: r.coefficients,
                        truth,
                        jnp.asarray(truth.coefficients, dtype),
                    ),
                    eta=1.0,
                    activation="sigmoid",
                )
                data, _ = mp.generate_activity(
                    teacher, jnp.asarray(inputs, dtype), jnp.asarray(w0, dtype), key=jr.key(0)
                )
                theta = jnp.asarray(theta, dtype)
                f, t = jax.jit(predictions)(theta, data)
                jac = jax.jit(jax.jacfwd(lambda th: predictions(th, data)[0]))(theta)
                return np.asarray(f, np.float64), np.asarray(t, np.float64), np.asarray(jac)

        return at

    at64, at32 = setup(True), setup(False)
    theta_star = np.asarray(truth.coefficients, np.float64).reshape(-1)
    rng = np.random.default_rng(args.seed)
    # float32-representable, so that both precisions start from the same point
    theta_p = (theta_star + args.perturbation * rng.standard_normal(27)).astype(np.float32)
    theta_p = theta_p.astype(np.float64)
    eps32 = float(np.finfo(np.float32).eps)
    names = [mp.rules.format_monomial(e, ("x", "y", "w")) for e in np.ndindex(3, 3, 3)]

    f64s, t64, _ = at64(theta_star)
    f32s, t32, _ = at32(theta_star)
    f64p, _, j64p = at64(theta_p)
    f32p, _, j32p = at32(theta_p)
    n_obs = f64s.size

    u, s, vt = np.linalg.svd(j64p, full_matrices=False)
    col = np.linalg.norm(j64p, axis=0)
    s_scaled = np.linalg.svd(j64p / col, compute_uv=False)
    err = j32p.astype(np.float64) - j64p
    along = np.linalg.norm(err @ vt.T, axis=0) / s  # float32 error of J v_i, relative to σ_i

    # Normal equations formed in float32: their eigenvalues against σ².
    h32 = (j32p.T @ j32p).astype(np.float64)
    eig32 = np.sort(np.linalg.eigvalsh(h32))[::-1]

    # The rounding of the float32 simulation, and what it alone does to the least-squares fit.
    rounding = f32p - f64p
    data_rounding = t32 - t64
    noise_theta = np.linalg.lstsq(j64p, rounding - data_rounding, rcond=None)[0]
    noise_along = np.abs(u.T @ (rounding - data_rounding)) / s  # coefficient error per direction

    def landing(delta):
        return float(np.max(np.abs(theta_p + delta - theta_star)))

    r64, r32 = f64p - t64, (f32p - t32)
    step64 = np.linalg.lstsq(j64p, -r64, rcond=None)[0]
    j32, r32f = j32p.astype(np.float32), r32.astype(np.float32)
    h, g = j32.T @ j32, j32.T @ r32f
    try:
        step_normal = np.linalg.solve(h, -g).astype(np.float64)
    except np.linalg.LinAlgError:
        step_normal = np.full(27, np.nan)
    rr = np.linalg.qr(np.concatenate([j32, r32f[:, None]], 1), mode="r")
    step_qr = np.linalg.solve(rr[:27, :27], -rr[:27, 27]).astype(np.float64)
    # The same QR solve on float64 data (J and r exact), rounded to float32 only in the solve.
    j64f, r64f = j64p.astype(np.float32), r64.astype(np.float32)
    rr = np.linalg.qr(np.concatenate([j64f, r64f[:, None]], 1), mode="r")
    step_qr_exact_j = np.linalg.solve(rr[:27, :27], -rr[:27, 27]).astype(np.float64)

    weakest = []
    for i in np.argsort(s)[:4]:
        top = np.argsort(-np.abs(vt[i]))[:4]
        weakest.append(
            {
                "sigma_over_sigma1": float(s[i] / s[0]),
                "direction": {names[k]: round(float(vt[i, k]), 3) for k in top},
                "j32_error_rel": float(along[i]),
                "rounding_coefficient_error": float(noise_along[i]),
                # the loss change a move of 0.02 along this direction makes
                "loss_change_at_0.02": float((0.02 * s[i]) ** 2 / n_obs),
            }
        )
    # Could float32 normal equations do with a larger damping instead? Leaving every direction
    # they lose (σ² < ε₃₂ σ₁²) at zero, where the fit starts, keeps the truth's part along
    # those directions as error.
    theta_star_along = vt @ theta_star
    below = s**2 < eps32 * s[0] ** 2
    kept_error = vt[below].T @ theta_star_along[below]
    spectrum = [
        {
            "sigma_over_sigma1": float(f"{s[i] / s[0]:.3g}"),
            "truth_along": float(f"{theta_star_along[i]:.3g}"),
            "rounding_coefficient_error": float(f"{noise_along[i]:.3g}"),
            "j32_error_rel": float(f"{along[i]:.3g}"),
        }
        for i in range(27)
    ]
    summary = {
        "n_in": n_in,
        "n_out": n_out,
        "batch": args.batch,
        "observations": n_obs,
        "kappa_J": float(s[0] / s[-1]),
        "kappa_J_unit_columns": float(s_scaled[0] / s_scaled[-1]),
        "kappa_J_squared_times_eps32": float((s[0] / s[-1]) ** 2 * eps32),
        "directions_below_eps32_in_JtJ": int(np.sum(s**2 < eps32 * s[0] ** 2)),
        "directions_below_eps32_in_J": int(np.sum(s < eps32 * s[0])),
        "smallest_eig_JtJ_float32_over_sigma_min_sq": float(eig32[-1] / s[-1] ** 2),
        "j32_relative_error_max_column": float(
            np.max(np.linalg.norm(err, axis=0) / np.linalg.norm(j64p, axis=0))
        ),
        "loss32_at_truth": float(np.mean((f32s - t32) ** 2)),
        "loss64_at_truth": float(np.mean((f64s - t64) ** 2)),
        "loss64_at_perturbed": float(np.mean(r64**2)),
        "loss32_at_perturbed": float(np.mean(r32**2)),
        "rounding_rms_simulation": float(np.sqrt(np.mean(rounding**2))),
        "rounding_rms_data": float(np.sqrt(np.mean(data_rounding**2))),
        "rounding_loss_floor": float(np.mean((rounding - data_rounding) ** 2)),
        "rounding_max_coefficient_error": float(np.max(np.abs(noise_theta))),
        "gauss_newton_landing_max_error": {
            "start": landing(np.zeros(27)),
            "float64_lstsq": landing(step64),
            "float32_normal_equations": landing(step_normal),
            "float32_qr": landing(step_qr),
            "float32_qr_of_float64_J": landing(step_qr_exact_j),
        },
        "truth_error_if_JtJ_lost_left_at_zero": float(np.max(np.abs(kept_error))),
        "weakest_directions": weakest,
        "spectrum": spectrum,
        "seconds": time.perf_counter() - start,
    }
    for k, v in summary.items():
        if k not in ("weakest_directions", "spectrum"):
            print(f"{k}: {v}")
    for w in weakest:
        print(w)
    for row in spectrum:
        print(row)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
