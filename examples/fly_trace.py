"""Do the real flies' choices prefer a rule with memory? The trace family against the
covariance rule, fly by fly, with 95 % Laplace intervals on the trace's decay λ.

Families (each fly its own rule, all flies in one vmapped fit per family):

- covariance: `Δw = θ₀ + θ_r r + θ_x x + θ_xr x·r` (four free terms, as `fly_intervals.py`);
- trace: `e ← λ e + θ₀ + θ_x x`, `Δw = η r e` (three free parameters: λ, fitted as its logit,
  and the two terms of the trace), the reward signal `r = R − E[R]` arriving at once (the
  real task's reward is immediate: the trace can only add credit to earlier trials).

Levenberg–Marquardt on the likelihood marginal over `--draws` draws of the unobserved odour
encoding noise (variance 0.015²), no penalty; `compare_models` scores both by BIC and the
Laplace evidence (prior N(0, 1) per free parameter) without refitting. By default the 13
flies with rejections, block 1 only (the only block with rejections in this conversion of
the data), as `fly_intervals.py`.

    python examples/fly_trace.py            # 13 flies, block 1
    python examples/fly_trace.py --quick    # 3 flies, 2 draws, 6 steps: a check
"""

import time

import _cli


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="3 flies, 2 draws, 6 steps")
    _cli.fly_data_option(p)
    p.add_argument("--trials", choices=("block1", "all"), default="block1")
    p.add_argument("--draws", type=_cli.positive_int, default=8, help="noise draws (default 8)")
    p.add_argument("--steps", type=_cli.positive_int, default=20, help="solver steps (20)")
    args = p.parse_args(argv)
    _cli.check_fly_data(p, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    bh = mp.behaviour
    draws, steps = (2, 6) if args.quick else (args.draws, args.steps)
    data = mp.flies.load_drosophila(args.data).without_accept_only()
    if args.quick:
        data = data.select([0, 1, 2])
    if args.trials == "block1":
        data = data.first_block()
    flies = len(data)
    k_noise, k_net, k_rule = jr.split(jr.key(args.seed), 3)
    encoding = bh.OdourEncoding(2, variance=bh.DEFAULT_INPUT_VARIANCE)
    noisy = bh.NoisyChoices.from_choices(data.dataset, encoding, draws, key=k_noise)
    member_data = bh.stack_members(noisy, flies)  # one member per fly
    network = bh.MushroomBody(mp.TaylorRule.zeros(("x", "y", "w", "r"), 1), key=k_net)

    def stacked(rule):
        grow = lambda a: jnp.broadcast_to(a, (flies,) + a.shape)
        return jax.tree.map(lambda a: grow(a) if eqx.is_inexact_array(a) else a, rule)

    template = mp.TaylorRule.zeros(("x", "y", "w", "r"), 1)
    mask = template.mask(list(mp.flies.FAMILY_TERMS["covariance"]))
    covariance = stacked(template.with_trainable(mask))
    covariance = eqx.tree_at(
        lambda r: r.coefficients,
        covariance,
        1e-3 * jr.normal(k_rule, covariance.coefficients.shape) * mask,
    )
    trace = eqx.filter_vmap(lambda k: mp.flies.family_rule("trace", key=k))(jr.split(k_rule, flies))
    loss = bh.ChoiceBCE()
    fitted, seconds = {}, {}
    for name, rule in (("covariance", covariance), ("trace", trace)):
        t0 = time.perf_counter()
        fitted[name] = mp.fit(
            network.with_rule(rule),
            member_data,
            loss,
            solver=mp.LevenbergMarquardt(),
            steps=steps,
            ensemble=True,
            progress=not args.no_progress,
        ).model
        seconds[name] = time.perf_counter() - t0
    post = mp.laplace(fitted["trace"], member_data, loss, ensemble=True)
    ((_, (decay, low, high)),) = post.natural_intervals(0.95).items()
    comparison = mp.compare_models(
        fitted, member_data, loss, refit=False, ensemble=True, progress=not args.no_progress
    )
    bic = np.asarray(comparison.bic)
    evidence = np.asarray(comparison.log_evidence)
    inner = np.asarray(fitted["trace"].rule.inner.coefficients)
    # A direction the data leave undetermined is dropped from the covariance (pseudo-
    # inverse): an interval of zero width then means "not determined", not "certain".
    rank = np.asarray(post.rank).reshape(flies)
    free = sum(post.free)
    rows = []
    for i, fly in enumerate(data.names):
        rows.append(
            {
                "fly": fly,
                "decay": float(decay[i]),
                "decay_interval_95": [float(low[i]), float(high[i])],
                "trace_terms": {"1": float(inner[i, 0]), "x": float(inner[i, 1])},
                "posterior_rank": int(rank[i]),
                "determined": bool(rank[i] == free),
                "bic": {"covariance": float(bic[i, 0]), "trace": float(bic[i, 1])},
                "log_evidence": {
                    "covariance": float(evidence[i, 0]),
                    "trace": float(evidence[i, 1]),
                },
                "prefers_trace_bic": bool(bic[i, 1] < bic[i, 0]),
                "prefers_trace_evidence": bool(evidence[i, 1] > evidence[i, 0]),
            }
        )
        print(
            f"{fly}: λ {decay[i]:.3f} [{low[i]:.3f}, {high[i]:.3f}] (rank {rank[i]}/{free}), "
            "ΔBIC (trace − cov) "
            f"{bic[i, 1] - bic[i, 0]:+.2f}, Δlog evidence {evidence[i, 1] - evidence[i, 0]:+.2f}",
            flush=True,
        )
    run = _cli.open_run(args, "fly_trace")
    run.write_json("flies.json", rows)
    summary = {
        "flies": flies,
        "trials": args.trials,
        "draws": draws,
        "steps": steps,
        "prefer_trace": {
            "bic": int(sum(r["prefers_trace_bic"] for r in rows)),
            "evidence": int(sum(r["prefers_trace_evidence"] for r in rows)),
        },
        "summed": {
            "bic_difference": float(np.sum(bic[:, 1] - bic[:, 0])),
            "log_evidence_difference": float(np.sum(evidence[:, 1] - evidence[:, 0])),
        },
        "decay_median": float(np.median(decay)),
        "fully_determined": int(np.sum(rank == free)),
        "decay_per_fly": [r["decay"] for r in rows],
        "decay_interval_95_per_fly": [r["decay_interval_95"] for r in rows],
        "fit_seconds": seconds,
        "seed": args.seed,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
    }
    return _cli.finish(run, summary)


if __name__ == "__main__":
    main()
