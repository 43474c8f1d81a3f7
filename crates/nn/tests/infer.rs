//! The inference paths (no caches, matrix-vector products on the stored weights) agree
//! with the training forward passes they stand in for.

use lasr_nn::{BiLstm, LstmCell, Module};
use ndarray::{Array2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn max_rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

#[test]
fn bilstm_infer_equals_the_training_forward() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Widths that are and are not multiples of the kernel's 8 rows and 16 lanes.
    for (steps, input, hidden) in [(1, 3, 2), (7, 20, 13), (40, 80, 64)] {
        let layer = BiLstm::new(input, hidden, 0, &mut rng);
        let x = lasr_nn::init::uniform((steps, input), 1.0, &mut rng);
        let (y, _) = layer
            .forward(x.view().insert_axis(Axis(1)), Some(&[steps]))
            .unwrap();
        let y = y.index_axis_move(Axis(1), 0);
        let fast = layer.infer(x.view()).unwrap();
        let d = max_rel_diff(&fast, &y);
        assert!(d < 1e-5, "[{steps}, {input}] -> {hidden}: differs by {d}");
        // Both directions contribute: the reverse half is not a copy of the forward one.
        assert!(steps == 1 || fast.column(0) != fast.column(hidden));
    }
    let layer = BiLstm::new(4, 3, 0, &mut rng);
    assert!(layer.infer(Array2::zeros((5, 6)).view()).is_err());
}

#[test]
fn cell_step_equals_the_training_forward_for_one_and_many_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let cell = LstmCell::new(21, 19, &mut rng);
    let prepared = cell.prepare();
    for rows in [1, 3] {
        let x = lasr_nn::init::uniform((rows, 21), 1.0, &mut rng);
        let h = lasr_nn::init::uniform((rows, 19), 1.0, &mut rng);
        let c = lasr_nn::init::uniform((rows, 19), 1.0, &mut rng);
        let (h1, c1, _) = cell
            .forward(&prepared, x.view(), h.view(), c.view())
            .unwrap();
        let packed = cell.prepare_packed(lasr_nn::WeightFormat::F32);
        for p in [Some(&prepared), Some(&packed), None] {
            let (h2, c2) = cell.step(p, x.view(), h.view(), c.view()).unwrap();
            assert!(max_rel_diff(&h2, &h1) < 1e-5 && max_rel_diff(&c2, &c1) < 1e-5);
        }
        // bfloat16 weights: near, not equal.
        let bf16 = cell.prepare_packed(lasr_nn::WeightFormat::Bf16);
        let (h3, _) = cell
            .step(Some(&bf16), x.view(), h.view(), c.view())
            .unwrap();
        let d = max_rel_diff(&h3, &h1);
        assert!(d > 0.0 && d < 2e-2, "bf16 rows={rows}: differs by {d}");
        let other = LstmCell::new(21, 7, &mut rng).prepare_packed(lasr_nn::WeightFormat::F32);
        // Weights prepared from a cell of another size are refused, not read out of
        // bounds (or panicked on), by the single-row and the gemm paths alike.
        let err = cell
            .step(Some(&other), x.view(), h.view(), c.view())
            .unwrap_err();
        assert!(err.to_string().contains("prepared"), "{err}");
        let err = cell
            .forward(&other, x.view(), h.view(), c.view())
            .unwrap_err();
        assert!(err.to_string().contains("prepared"), "{err}");
    }
    assert!(cell
        .step(
            Some(&prepared),
            Array2::zeros((1, 20)).view(),
            Array2::zeros((1, 19)).view(),
            Array2::zeros((1, 19)).view()
        )
        .is_err());
}

#[test]
fn cell_gradients_deferred_over_steps_equal_per_step_ones() {
    // Three chained steps; backward step by step adding gradients each time, against
    // backward_gates per step and one accumulate over all three.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let cell = LstmCell::new(7, 5, &mut rng);
    let prepared = cell.prepare();
    let (mut h, mut c) = (Array2::zeros((2, 5)), Array2::zeros((2, 5)));
    let mut caches = Vec::new();
    for _ in 0..3 {
        let x = lasr_nn::init::uniform((2, 7), 1.0, &mut rng);
        let (h1, c1, cache) = cell
            .forward(&prepared, x.view(), h.view(), c.view())
            .unwrap();
        (h, c) = (h1, c1);
        caches.push(cache);
    }
    let dh_last = lasr_nn::init::uniform((2, 5), 1.0, &mut rng);
    // `packed`: backward_gates reads the prepared cell's packed transposes (on
    // AVX-512 CPUs, such as CI's; elsewhere the same products as without).
    let run = |deferred: bool, packed: bool| {
        let mut grads = cell.zeros_like();
        let (mut dh, mut dc) = (dh_last.clone(), Array2::zeros((2, 5)));
        let mut dxs = Vec::new();
        let mut pending = Vec::new();
        for cache in caches.iter().rev() {
            let (dx, dh_prev, dc_prev) = if deferred {
                let (dx, dhp, dcp, dg) = cell
                    .backward_gates(packed.then_some(&prepared), cache, dh.view(), dc.view())
                    .unwrap();
                pending.push(dg);
                (dx, dhp, dcp)
            } else {
                cell.backward(cache, dh.view(), dc.view(), &mut grads)
                    .unwrap()
            };
            dxs.push(dx);
            (dh, dc) = (dh_prev, dc_prev);
        }
        if deferred {
            let steps: Vec<_> = caches
                .iter()
                .rev()
                .zip(&pending)
                .map(|(c, g)| (c, g.view()))
                .collect();
            cell.accumulate(&steps, &mut grads).unwrap();
        }
        (grads, dxs)
    };
    // A training preparation of a cell of another size is refused by backward too.
    let other = LstmCell::new(8, 5, &mut rng).prepare();
    let err = cell
        .backward_gates(Some(&other), &caches[0], dh_last.view(), dh_last.view())
        .unwrap_err();
    assert!(err.to_string().contains("prepared"), "{err}");
    let (per_step, dx_a) = run(false, false);
    let (deferred, dx_b) = run(true, false);
    assert_eq!(dx_a, dx_b);
    // The packed products sum in another order than gemm: equal to rounding.
    let (packed, dx_c) = run(true, true);
    for (a, c) in dx_a.iter().zip(&dx_c) {
        assert!(max_rel_diff(a, c) < 1e-5, "dx: {}", max_rel_diff(a, c));
    }
    for other in [&deferred, &packed] {
        for (a, b) in [
            (&per_step.weight_ih, &other.weight_ih),
            (&per_step.weight_hh, &other.weight_hh),
        ] {
            assert!(a.iter().any(|&v| v != 0.0));
            assert!(max_rel_diff(a, b) < 1e-5, "{}", max_rel_diff(a, b));
        }
        assert!((&per_step.bias_ih - &other.bias_ih)
            .iter()
            .all(|d| d.abs() < 1e-5));
    }
    // Gate gradients of the wrong width are refused.
    let wrong = Array2::zeros((2, 19));
    assert!(cell
        .accumulate(&[(&caches[0], wrong.view())], &mut cell.zeros_like())
        .is_err());
}

#[test]
fn attention_infer_step_equals_the_training_step_to_the_bit() {
    use lasr_nn::AdditiveAttention;
    use rand::RngExt;
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let (units, n, d, s, a) = (13, 5, 6, 7, 9);
    // Widths under the score loops' 16 lanes and over them with a remainder; an odd
    // number of positions, so the decoder's two-at-a-time loop ends on a single one.
    let mut layers = Vec::new();
    for a in [a, 35] {
        layers.push(AdditiveAttention::new(d, s, a, &mut rng));
        layers.push(AdditiveAttention::new_location(d, s, a, 3, 5, &mut rng));
    }
    for att in layers {
        let a = att.att_h.output_dim();
        let h = Array2::from_shape_fn((units, d), |_| rng.random_range(-1.0f32..1.0));
        let keys = att
            .keys(h.view().insert_axis(Axis(1)))
            .unwrap()
            .index_axis_move(Axis(1), 0);
        let state = Array2::from_shape_fn((n, s), |_| rng.random_range(-1.0f32..1.0));
        // Previous weights that differ per row, as a beam's hypotheses' do.
        let mut prev = Array2::from_shape_fn((n, units), |_| rng.random_range(0.0f32..1.0));
        for mut r in prev.rows_mut() {
            let z = r.sum();
            r.mapv_inplace(|x| x / z);
        }
        let prev = att.location.as_ref().map(|_| prev);
        let hb = h.view().insert_axis(Axis(1));
        let hb = hb.broadcast((units, n, d)).unwrap();
        let kb = keys.view().insert_axis(Axis(1));
        let kb = kb.broadcast((units, n, a)).unwrap();
        // Training steps without and with the query weights prepared (packed on
        // AVX-512 CPUs).
        let prepared = att.prepare();
        let step = |p| {
            att.step(
                p,
                hb,
                kb,
                state.view(),
                None,
                prev.as_ref().map(|p| p.view()),
            )
            .unwrap()
        };
        let (ctx, cache) = step(None);
        let (ctx2, alpha2) = att
            .infer_step(
                h.view(),
                keys.view(),
                state.view(),
                prev.as_ref().map(|p| p.view()),
            )
            .unwrap();
        assert_eq!(ctx, ctx2);
        assert_eq!(cache.alpha(), alpha2.view());
        // Prepared: the same up to the rounding of the query products' other order.
        let (ctx3, _) = step(Some(&prepared));
        let diff = (&ctx3 - &ctx).iter().fold(0f32, |m, d| m.max(d.abs()));
        assert!(diff < 1e-5, "prepared query: {diff}");
        // Not trivially equal: the rows attend differently.
        assert_ne!(alpha2.row(0), alpha2.row(1));
    }
    let att = AdditiveAttention::new_location(d, s, a, 3, 5, &mut rng);
    let h = Array2::<f32>::zeros((units, d));
    let keys = Array2::<f32>::zeros((units, a));
    let state = Array2::<f32>::zeros((n, s));
    let prev = AdditiveAttention::initial_weights(units, &vec![units; n]);
    assert!(att
        .infer_step(h.view(), keys.view(), state.view(), Some(prev.view()))
        .is_ok());
    assert!(att
        .infer_step(h.view(), keys.view(), state.view(), None)
        .is_err());
    let wrong = Array2::<f32>::zeros((units + 1, a));
    assert!(att
        .infer_step(h.view(), wrong.view(), state.view(), Some(prev.view()))
        .is_err());
    for shape in [(n, units + 1), (n + 1, units)] {
        let bad = Array2::<f32>::zeros(shape);
        assert!(att
            .infer_step(h.view(), keys.view(), state.view(), Some(bad.view()))
            .is_err());
    }
    let none = Array2::<f32>::zeros((0, d));
    let no_keys = Array2::<f32>::zeros((0, a));
    let first = AdditiveAttention::initial_weights(0, &vec![0; n]);
    assert!(att
        .infer_step(
            none.view(),
            no_keys.view(),
            state.view(),
            Some(first.view())
        )
        .is_err());
}
