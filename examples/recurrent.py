"""Recover plasticity rules of networks that are not one feed-forward layer.

Part 1, a recurrent network: 50 tanh units driven by 10 Gaussian inputs through fixed input
weights, y_t = tanh(W_in x_t + W_rec y_{t-1}), whose recurrent synapses follow Oja's rule
(Δw_ij = η (y_j(t-1) y_i(t) − y_i(t)² w_ij): the presynaptic factor of a recurrent synapse is
the presynaptic unit's previous rate). Its activity is recorded with Gaussian noise, from all
units and then from half of them; a 27-term Taylor rule is fitted by Levenberg–Marquardt on
growing prefixes of the trajectories (10, 25, then 50 steps) and scored on held-out
trajectories by the R² of the recurrent weights (and of their changes). The recurrent weights
are clipped to [−2, 2] (the true ones stay below 0.6), so that rules the fit explores cannot
make them overflow.

Then the same network with plastic input synapses too, following a rule of their own (x*y − w,
x the input's rate): both 27-term rules are fitted at once from all units' activity and scored
by the R² of the recurrent and of the input weights.

Part 2, two plastic layers in a chain, 20 → 30 → 10 sigmoid units, Oja's rule in the first
and a Hebbian rule with decay (x*y − w) in the second, recorded at the last layer only: both
rules (27 terms each) are fitted at once (on the whole length: see the script), the Laplace
posterior's identifiability says which combinations of their terms the recording
determines, and each rule is also fitted within its true family of two terms, with 95 %
intervals.

    python examples/recurrent.py            # the default sizes
    python examples/recurrent.py --quick    # fewer and shorter trajectories
"""

import time

import _cli


def parse_args(argv=None):
    p = _cli.parser(__doc__, quick="fewer and shorter trajectories (about 30 s)")
    p.add_argument(
        "--noise", type=_cli.non_negative_float, default=0.02, help="std of the recording noise"
    )
    p.add_argument(
        "--steps", type=_cli.positive_int, default=10, help="solver steps per prefix length"
    )
    p.add_argument(
        "--prefixes",
        type=_cli.list_of(_cli.positive_int),
        default=(10, 25, 50),
        help="the growing trajectory lengths fitted one after another (default 10,25,50; "
        "a single value fits that length only)",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    _cli.compile_cache(args)
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import metaplastic as mp

    n_train, n_test, length = (6, 4, 30) if args.quick else (16, 8, 50)
    args.prefixes = tuple(min(p, length) for p in args.prefixes)
    key = jr.key(args.seed)
    k_rec, k_chain = jr.split(key)
    loss = mp.losses.RecordingLoss()
    summary = {
        "noise": args.noise,
        "seed": args.seed,
        "quick": args.quick,
        "prefixes": list(args.prefixes),
        "steps_per_prefix": args.steps,
    }

    def fit(student, data, prefixes):
        # Continuation in the trajectory length: fit the first 10 steps of every trajectory,
        # then 25, then all, each fit starting where the last ended. On a short prefix the
        # weights have barely moved and the loss is nearly quadratic in the rule; from the
        # same start a fit of the whole length stalls in a local minimum (measured: see
        # examples/results/model_zoo.md).
        steps = jnp.arange(data.step_mask.shape[1])
        for prefix in prefixes:
            mask = data.step_mask & (steps < prefix)
            part = eqx.tree_at(lambda d: d.step_mask, data, mask)
            student = mp.fit(
                student, part, loss, steps=args.steps, progress=not args.no_progress
            ).model
        return student

    def median(a):
        return float(np.median(a))

    # ------------------------------------------------------------------ part 1: recurrent
    oja = mp.TaylorRule.from_expression("x*y - y^2*w")
    n_in, n = 10, 50
    truth = mp.nn.Model(
        mp.nn.PlasticRecurrent(oja, n_in, n, eta=0.02, weight_bound=2.0),
        mp.nn.GaussianHead(n, noise_std=args.noise),
    )
    kx, kd, kt, ktd, ki = jr.split(k_rec, 5)
    x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_train, std=1.0, key=kx)
    x_test = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_test, std=1.0, key=kt)
    held, _ = mp.generate_recordings(truth, x_test, key=ktd)
    recurrent = {}
    for name, fraction in (("all_units", 1.0), ("half_units", 0.5)):
        t0 = time.perf_counter()
        data, _ = mp.generate_recordings(truth, x, recorded_fraction=fraction, key=kd)
        start_rule = mp.TaylorRule.random(scale=1e-3, key=ki)
        student = eqx.tree_at(lambda m: m.network.rule, truth, start_rule)
        fitted = fit(student, data, args.prefixes)
        scores = mp.metrics.compare_networks(truth.network, fitted.network, held)
        recurrent[name] = {
            "recorded_fraction": fraction,
            "r2_weights": median(scores["r2_states"][".recurrent_weights"]),
            "r2_weight_changes": median(scores["r2_changes"][".recurrent_weights"]),
            "r2_activity": median(scores["r2_outputs"]),
            "rule": fitted.network.rule.to_expression(tol=1e-2),
            "coefficient_error": mp.metrics.coefficient_error(fitted.network.rule, oja),
            "seconds": time.perf_counter() - t0,
        }
        print(f"recurrent, {name}: {recurrent[name]['rule']}")
    # The input synapses plastic too, by a rule of their own (x*y − w, x the input's rate):
    # both 27-term rules fitted at once from all units' activity.
    t0 = time.perf_counter()
    input_rule = mp.TaylorRule.from_expression("x*y - w")
    truth_in = mp.nn.Model(
        mp.nn.PlasticRecurrent(oja, n_in, n, input_rule=input_rule, eta=0.02, weight_bound=2.0),
        mp.nn.GaussianHead(n, noise_std=args.noise),
    )
    kx, kd, kt, ktd, ki, ki2 = jr.split(jr.fold_in(key, 3), 6)
    x = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_train, std=1.0, key=kx)
    x_test = mp.tasks.gaussian_stimuli(n_in, length, n_trajectories=n_test, std=1.0, key=kt)
    data, _ = mp.generate_recordings(truth_in, x, key=kd)
    held, _ = mp.generate_recordings(truth_in, x_test, key=ktd)
    student = eqx.tree_at(
        lambda m: (m.network.rule, m.network.input_rule),
        truth_in,
        (mp.TaylorRule.random(scale=1e-3, key=ki), mp.TaylorRule.random(scale=1e-3, key=ki2)),
    )
    fitted = fit(student, data, args.prefixes)
    scores = mp.metrics.compare_networks(truth_in.network, fitted.network, held)
    plastic_inputs = {
        "true_rule": oja.to_expression(),
        "true_input_rule": input_rule.to_expression(),
        "r2_weights": median(scores["r2_states"][".recurrent_weights"]),
        "r2_weight_changes": median(scores["r2_changes"][".recurrent_weights"]),
        "r2_input_weights": median(scores["r2_states"][".input_weights"]),
        "r2_input_weight_changes": median(scores["r2_changes"][".input_weights"]),
        "r2_activity": median(scores["r2_outputs"]),
        "rule": fitted.network.rule.to_expression(tol=1e-2),
        "input_rule": fitted.network.input_rule.to_expression(tol=1e-2),
        "coefficient_error": mp.metrics.coefficient_error(fitted.network.rule, oja),
        "input_coefficient_error": mp.metrics.coefficient_error(
            fitted.network.input_rule, input_rule
        ),
        "seconds": time.perf_counter() - t0,
    }
    print(f"recurrent, plastic inputs: {plastic_inputs['rule']}")
    print(f"recurrent, input synapses: {plastic_inputs['input_rule']}")
    summary["recurrent"] = {
        **recurrent["all_units"],
        "half_units": recurrent["half_units"],
        "plastic_inputs": plastic_inputs,
    }

    # ------------------------------------------------------------------ part 2: two layers
    t0 = time.perf_counter()
    second_rule = mp.TaylorRule.from_expression("x*y - w")
    sizes = (20, 30, 10)
    chain = mp.nn.Chain(
        mp.nn.PlasticDense(oja, eta=0.05, in_size=sizes[0], out_size=sizes[1]),
        mp.nn.PlasticDense(second_rule, eta=0.05, in_size=sizes[1], out_size=sizes[2]),
    )
    truth2 = mp.nn.Model(chain, mp.nn.GaussianHead(sizes[2], noise_std=args.noise))
    kx, kd, kt, ktd, ki1, ki2 = jr.split(k_chain, 6)
    x = mp.tasks.gaussian_stimuli(sizes[0], length, n_trajectories=n_train, std=1.0, key=kx)
    x_test = mp.tasks.gaussian_stimuli(sizes[0], length, n_trajectories=n_test, std=1.0, key=kt)
    data, _ = mp.generate_recordings(truth2, x, state_scale=0.3, key=kd)
    held, _ = mp.generate_recordings(truth2, x_test, state_scale=0.3, key=ktd)
    student = eqx.tree_at(
        lambda m: (m.network.layers[0].rule, m.network.layers[1].rule),
        truth2,
        (mp.TaylorRule.random(scale=1e-3, key=ki1), mp.TaylorRule.random(scale=1e-3, key=ki2)),
    )
    # The whole length at once: the weights of the chain are not clipped, and a rule fitted
    # to a prefix can make them overflow over the whole trajectory.
    fitted = fit(student, data, (length,))
    scores = mp.metrics.compare_networks(chain, fitted.network, held)
    post = mp.laplace(fitted, data, loss)
    ident = post.identifiability()
    rules = [layer.rule for layer in fitted.network.layers]
    layers = {}
    for i, (rule, true) in enumerate(zip(rules, (oja, second_rule))):
        path = f"[{i}]"
        layers[f"layer{i + 1}"] = {
            "true_rule": true.to_expression(),
            "rule": rule.to_expression(tol=1e-2),
            "coefficient_error": mp.metrics.coefficient_error(rule, true),
            "r2_weights": median(scores["r2_states"][path]),
            "r2_weight_changes": median(scores["r2_changes"][path]),
        }
        print(f"two layers, layer {i + 1}: {layers[f'layer{i + 1}']['rule']}")
    # Each layer's rule within its true family of terms ({x*y, y^2*w} and {x*y, w}): four
    # coefficients, with their 95 % Laplace intervals.
    families = (["x*y", "y^2*w"], ["x*y", "w"])
    zero = mp.TaylorRule.zeros()
    student = eqx.tree_at(
        lambda m: (m.network.layers[0].rule, m.network.layers[1].rule),
        truth2,
        tuple(zero.with_trainable(zero.mask(terms)) for terms in families),
    )
    family_fit = fit(student, data, (length,))
    lo, hi = mp.laplace(family_fit, data, loss).interval(0.95)
    for i, terms in enumerate(families):
        rule = family_fit.network.layers[i].rule
        layers[f"layer{i + 1}"]["family_fit"] = {
            term: {
                "estimate": rule.coefficient(term),
                "interval_95": [
                    lo.network.layers[i].rule.coefficient(term),
                    hi.network.layers[i].rule.coefficient(term),
                ],
            }
            for term in terms
        }
    summary["two_layers"] = {
        "sizes": list(sizes),
        **layers,
        "r2_activity": median(scores["r2_outputs"]),
        "parameters": len(post.names),
        "rank": int(post.rank),
        "condition_number": float(ident.condition_number),
        "weakest_directions": ident.directions(3),
        "seconds": time.perf_counter() - t0,
    }
    summary["seconds"] = time.perf_counter() - start
    return _cli.finish(_cli.open_run(args, "recurrent"), summary)


if __name__ == "__main__":
    main()
