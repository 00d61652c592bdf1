"""Why do Oja's coefficients stop being identifiable under noise while the dynamics stay?

The same 20 → 50 sigmoid layer as `oja_robustness.py` (Oja's rule, Gaussian inputs of std
0.1) is recorded twice from the same stimuli: without noise and with measurement noise of
`--noise` × std(activity). A 27-term Taylor rule over (x, y, w) is fitted to each recording
(both in one vmapped Levenberg–Marquardt fit, float64) and scored on held-out trajectories.
`metaplastic.laplace` then gives the curvature of each fit; its eigen-spectrum says which
combinations of monomials the recording determines and to what precision:

- a direction `v` with precision eigenvalue `λ` is determined to `±1/√λ`, and moving the rule
  by `δ` along `v` changes the recorded activity by `δ·σ·√(λ/n)` (RMS over the `n` recorded
  values, `σ` the noise level): the same weak directions that leave the coefficients free
  leave the activity — hence R² — unchanged;
- the error of each fit along each eigen-direction is compared with its predicted spread;
- the profile of one term (`--profile-term`, all other terms refitted at each value) is
  compared with its Laplace interval.

    python examples/identifiability.py            # 20 → 50, 50 trajectories, noise 0.2
    python examples/identifiability.py --quick    # 10 → 20, under a minute
"""

import time

import _cli


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="a 10 → 20 layer, fewer trajectories and profile points")
    p.add_argument(
        "--noise",
        type=_cli.positive_float,
        default=0.2,
        help="measurement noise, × std of the recorded activity (default 0.2)",
    )
    p.add_argument("--n-train", type=_cli.positive_int, default=None, help="default 50")
    p.add_argument("--steps", type=_cli.positive_int, default=20, help="Levenberg–Marquardt steps")
    p.add_argument(
        "--profile-term", default="x*y", help="the term whose profile is traced (default x*y)"
    )
    return p.parse_args(argv)


def spectrum_figure(run, spectra, profile, term, interval, truth):
    """Left: the precision's eigenvalues, scaled to a unit noise level, and the error of
    each fit along each eigen-direction against its predicted spread. Right: the profile of
    one term against the Laplace interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, s in spectra.items():
        k = range(1, len(s["eigenvalues_unit_noise"]) + 1)
        ax0.semilogy(k, s["eigenvalues_unit_noise"], "o-", ms=3, label=name)
        ax1.semilogy(k, s["predicted_std"], "-", lw=1, label=f"{name}: predicted ±1/√λ")
        ax1.semilogy(k, s["abs_error"], "o", ms=3, label=f"{name}: |error| along v")
    ax0.set_xlabel("eigen-direction (weakest first)")
    ax0.set_ylabel("eigenvalue of JᵀJ (σ = 1)")
    ax0.set_title("curvature spectrum")
    ax0.legend(fontsize=7)
    ax1.set_xlabel("eigen-direction (weakest first)")
    ax1.set_ylabel("coefficient units")
    ax1.set_title("error along each direction")
    ax1.legend(fontsize=6)
    values, nll = profile
    ax2.plot(values, nll, "o-", ms=3)
    ax2.axhline(1.92, color="k", lw=0.8, ls="--", label="95 % (Δ = 1.92)")
    ax2.axvspan(*interval, color="0.85", label="Laplace 95 % interval")
    ax2.axvline(truth, color="C3", lw=1, label="true value")
    ax2.set_xlabel(term)
    ax2.set_ylabel("Δ negative log-likelihood")
    ax2.set_title(f"profile of {term} (noisy fit)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = run.save_figure(fig, "identifiability.png", dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    # The weak directions are 1e-10 of the strong ones: float64 (see the README).
    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    n_in, n_out, length = (10, 20, 30) if args.quick else (20, 50, 50)
    n_train = args.n_train or (10 if args.quick else 50)
    batch = 5 if n_train % 5 == 0 else 1
    key = jr.key(args.seed)
    k_x, k_w, k_obs, k_init, k_test = jr.split(key, 5)
    truth = mp.rules.oja(("x", "y", "w"))
    teacher = mp.nn.PlasticDense(truth, eta=1.0, activation="sigmoid")
    x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_train, key=k_x)
    w0 = 0.01 * jr.normal(k_w, (n_train, n_out, n_in))
    clean, _ = mp.generate_activity(teacher, x, w0, key=k_obs)
    sigma = args.noise * float(jnp.std(clean.activity))
    noisy, _ = mp.generate_activity(
        teacher, x, w0, readout=mp.nn.ActivityReadout(noise_std=sigma), key=k_obs
    )
    names = ("noise-free", f"noise {args.noise:g}")
    data = jax.tree.map(lambda a, b: jnp.stack([a, b]) if eqx.is_array(a) else a, clean, noisy)
    students = eqx.filter_vmap(
        lambda k: mp.nn.PlasticDense(
            mp.TaylorRule.random(("x", "y", "w"), scale=1e-4, key=k), eta=1.0
        )
    )(jr.split(k_init, 2))
    loss = mp.losses.ActivityMSE()
    result = mp.fit(
        students,
        data,
        loss,
        solver=mp.LevenbergMarquardt(chunks=batch),
        steps=args.steps,
        batch_size=batch,
        ensemble=True,
        progress=not args.no_progress,
        key=k_init,
    )
    fitted = result.model
    post = mp.laplace(fitted, data, loss, ensemble=True, chunks=n_train // batch)
    held_x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=10, key=k_test)
    held_w0 = 0.01 * jr.normal(jr.fold_in(k_test, 1), (10, n_out, n_in))
    true_theta = np.asarray(truth.coefficients).reshape(-1)
    n_obs = int(np.prod(clean.activity.shape))
    member = lambda tree, i: jax.tree.map(lambda a: a[i] if eqx.is_array(a) else a, tree)
    fits, spectra = {}, {}
    for i, name in enumerate(names):
        model = member(fitted, i)
        scores = mp.metrics.compare_layers(teacher, model, held_w0, held_x)
        theta = np.asarray(model.rule.coefficients).reshape(-1)
        ident = post.member(i).identifiability()
        noise = float(np.asarray(post.noise_scale)[i])
        values = np.asarray(ident.eigenvalues)
        vectors = np.asarray(ident.eigenvectors)
        determined = values > ident.threshold
        error = vectors.T @ (theta - true_theta)
        predicted = np.where(determined, 1 / np.sqrt(np.maximum(values, 1e-300)), np.inf)
        # The RMS change of the recorded activity per unit move along each direction.
        activity_per_unit = np.sqrt(np.maximum(values, 0) * noise**2 / n_obs)
        z = error[determined] / predicted[determined]
        fits[name] = {
            "r2_weights": float(np.median(scores["r2_weights"])),
            "r2_activity": float(np.median(scores["r2_activity"])),
            "coef_xy": model.rule.coefficient("x*y"),
            "coef_y2w": model.rule.coefficient("y^2*w"),
            "max_coefficient_error": float(np.max(np.abs(theta - true_theta))),
            "noise_scale": noise,
            "condition_number": ident.condition_number,
            "determined_directions": int(determined.sum()),
            # The undetermined directions, then the three worst-determined ones.
            "weakest": ident.directions(int((~determined).sum()) + 3),
            "strongest_std": float(predicted[-1]),
            "weakest_determined_std": float(predicted[determined][0]),
            "activity_change_per_unit_weakest": float(activity_per_unit[determined][0]),
            "activity_change_per_unit_strongest": float(activity_per_unit[-1]),
            # Noise-free, σ̂ is rounding error and the spreads it predicts mean nothing.
            "within_1.96": float(np.mean(np.abs(z) <= 1.959964)) if i else None,
            "condition_number_determined": float(values[-1] / values[determined][0]),
        }
        spectra[name] = {
            "eigenvalues_unit_noise": (values * noise**2).tolist(),
            "predicted_std": predicted.tolist(),
            "abs_error": np.abs(error).tolist(),
        }

    for name, f in fits.items():
        print(
            f"{name}: R² weights {f['r2_weights']:.4f}, activity {f['r2_activity']:.4f}; "
            f"x*y {f['coef_xy']:+.4g}, y^2*w {f['coef_y2w']:+.4g}, largest coefficient error "
            f"{f['max_coefficient_error']:.3g}; σ̂ {f['noise_scale']:.3g}, condition number "
            f"{f['condition_number_determined']:.3g} over the {f['determined_directions']}/27 "
            "determined directions"
        )
        for line in f["weakest"]:
            print("   ", line)
        print(
            f"    strongest direction ±{f['strongest_std']:.3g}; a unit move along the weakest "
            f"determined one changes the activity by {f['activity_change_per_unit_weakest']:.3g}"
            f" RMS (strongest: {f['activity_change_per_unit_strongest']:.3g})"
            + (
                ""
                if f["within_1.96"] is None
                else f"; {100 * f['within_1.96']:.0f} % of the errors along the determined "
                "directions within ±1.96 sd"
            )
        )
    # The profile of one term on the noisy recording, against its Laplace interval.
    noisy_model = member(fitted, 1)
    noisy_post = post.member(1)
    # The interval conditional on the determined directions: on the noisy recording the
    # term moves along an undetermined one too, and its plain interval is unbounded.
    lo, hi = noisy_post.interval(0.95, conditional=True)
    term = args.profile_term
    centre = noisy_model.rule.coefficient(term)
    half = lo.rule.coefficient(term), hi.rule.coefficient(term)
    width = max(centre - half[0], half[1] - centre)
    grid = centre + width * np.linspace(-3, 3, 7 if args.quick else 13)
    # Each refit starts on the posterior's conditional mean given the term's value: x*y is
    # strongly correlated with other terms, and moving it alone diverges the simulation.
    prof = mp.profile(
        noisy_model,
        noisy,
        loss,
        term,
        grid,
        steps=6 if args.quick else 10,
        posterior=noisy_post,
    )
    noise = fits[names[1]]["noise_scale"]
    # The fit objective is the mean squared error; the log-likelihood is n/(2σ²) times it.
    nll = np.asarray(prof.objective) * n_obs / (2 * noise**2)
    nll = nll - min(nll.min(), float(loss(noisy_model, noisy)) * n_obs / (2 * noise**2))
    inside = grid[nll <= 1.92]
    profile = {
        "term": term,
        "values": grid.tolist(),
        "delta_nll": nll.tolist(),
        "laplace_interval": [float(half[0]), float(half[1])],
        "profile_interval_grid": [float(inside.min()), float(inside.max())]
        if inside.size
        else None,
        "true_value": truth.coefficient(term),
    }

    print(
        f"profile of {term} (noisy): Laplace 95 % {profile['laplace_interval']}, grid points "
        f"within Δ ≤ 1.92: {profile['profile_interval_grid']}"
    )
    run = _cli.open_run(args, "identifiability")
    run.write_json("identifiability.json", _cli.jsonable({"fits": fits, "spectra": spectra}))
    summary = {
        "identifiability": fits,
        "profile": profile,
        "settings": {
            "network": f"{n_in} -> {n_out}",
            "length": length,
            "trajectories": n_train,
            "noise": args.noise,
            "steps": args.steps,
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    try:
        path = spectrum_figure(
            run, spectra, (grid, nll), term, profile["laplace_interval"], profile["true_value"]
        )
        summary["figure"] = str(path)
    except ImportError:  # matplotlib is an optional extra
        pass
    return _cli.finish(run, summary)


if __name__ == "__main__":
    main()
