//! Every layer's backward against central finite differences.

use lasr_nn::gradcheck::{check_input, check_params, projection, Discrepancy};
use lasr_nn::{
    pyramid_reduce, pyramid_reduce_backward, softmax_cross_entropy, BiLstm, Embedding, Linear,
    Lstm, Module,
};
use ndarray::{Array2, Array3, ArrayD, Ix2, Ix3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const EPS: f32 = 1e-2;
/// Gradients below this magnitude are compared absolutely.
const FLOOR: f64 = 1e-3;
const TOL: f64 = 1e-2;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random3(shape: (usize, usize, usize), seed: u64) -> Array3<f32> {
    lasr_nn::init::uniform(shape, 1.0, &mut rng(seed))
}

fn assert_close(reports: &[Discrepancy], what: &str) {
    assert!(!reports.is_empty());
    for r in reports {
        eprintln!(
            "{what}: {} worst rel err {:.2e} (analytic {:.5}, numeric {:.5})",
            r.tensor, r.error, r.analytic, r.numeric
        );
        assert!(r.error < TOL, "{what}: {r:?}");
    }
}

#[test]
fn linear() {
    let layer = Linear::new(6, 4, true, &mut rng(1));
    let x = lasr_nn::init::uniform((5, 6), 1.0, &mut rng(2));
    let r = lasr_nn::init::uniform((5, 4), 1.0, &mut rng(3));
    let mut grads = layer.zeros_like();
    let dx = layer.backward(x.view(), r.view(), &mut grads).unwrap();
    let loss = |m: &Linear| {
        projection(
            r.view().into_dyn(),
            m.forward(x.view()).unwrap().view().into_dyn(),
        )
    };
    assert_close(
        &check_params(&layer, &grads, &loss, EPS, 100, FLOOR),
        "Linear",
    );
    let loss_x = |x: &ArrayD<f32>| {
        let x = x.view().into_dimensionality::<Ix2>().unwrap();
        projection(
            r.view().into_dyn(),
            layer.forward(x).unwrap().view().into_dyn(),
        )
    };
    assert_close(
        &[check_input(
            &x.clone().into_dyn(),
            &dx.into_dyn(),
            &loss_x,
            EPS,
            100,
            FLOOR,
        )],
        "Linear input",
    );
    // Gradients accumulate: a second backward doubles them.
    let once = grads.clone();
    layer.backward(x.view(), r.view(), &mut grads).unwrap();
    assert!((grads.weight - &once.weight * 2.0)
        .iter()
        .all(|v| v.abs() < 1e-5));
}

#[test]
fn embedding() {
    let layer = Embedding::new(7, 3, &mut rng(4));
    let ids = [2usize, 5, 2, 0];
    let r = lasr_nn::init::uniform((4, 3), 1.0, &mut rng(5));
    let mut grads = layer.zeros_like();
    layer.backward(&ids, r.view(), &mut grads).unwrap();
    let loss = |m: &Embedding| {
        projection(
            r.view().into_dyn(),
            m.forward(&ids).unwrap().view().into_dyn(),
        )
    };
    assert_close(
        &check_params(&layer, &grads, &loss, EPS, 100, FLOOR),
        "Embedding",
    );
    assert!(layer.forward(&[7]).is_err());
}

fn lstm_case(reverse: bool, lengths: Option<&[usize]>, seed: u64) {
    let layer = Lstm::new(5, 4, reverse, "_l0", &mut rng(seed));
    let x = random3((6, 3, 5), seed + 1);
    let r = random3((6, 3, 4), seed + 2);
    let (_, cache) = layer.forward(x.view(), lengths).unwrap();
    let mut grads = layer.zeros_like();
    let dx = layer.backward(&cache, r.view(), &mut grads).unwrap();
    let loss = |m: &Lstm| {
        projection(
            r.view().into_dyn(),
            m.forward(x.view(), lengths).unwrap().0.view().into_dyn(),
        )
    };
    let what = format!("LSTM reverse={reverse} lengths={lengths:?}");
    assert_close(&check_params(&layer, &grads, &loss, EPS, 60, FLOOR), &what);
    let loss_x = |x: &ArrayD<f32>| {
        let x = x.view().into_dimensionality::<Ix3>().unwrap();
        projection(
            r.view().into_dyn(),
            layer.forward(x, lengths).unwrap().0.view().into_dyn(),
        )
    };
    assert_close(
        &[check_input(
            &x.clone().into_dyn(),
            &dx.into_dyn(),
            &loss_x,
            EPS,
            90,
            FLOOR,
        )],
        &what,
    );
}

#[test]
fn lstm_forward_direction() {
    lstm_case(false, None, 10);
}

#[test]
fn lstm_reverse_direction() {
    lstm_case(true, None, 20);
}

#[test]
fn lstm_with_padding_both_directions() {
    lstm_case(false, Some(&[6, 3, 1]), 30);
    lstm_case(true, Some(&[4, 6, 2]), 40);
}

#[test]
fn bilstm() {
    let layer = BiLstm::new(3, 4, 0, &mut rng(50));
    let x = random3((5, 2, 3), 51);
    let r = random3((5, 2, 8), 52);
    let lengths = [5usize, 3];
    let (_, cache) = layer.forward(x.view(), Some(&lengths)).unwrap();
    let mut grads = layer.zeros_like();
    layer.backward(&cache, r.view(), &mut grads).unwrap();
    let loss = |m: &BiLstm| {
        projection(
            r.view().into_dyn(),
            m.forward(x.view(), Some(&lengths))
                .unwrap()
                .0
                .view()
                .into_dyn(),
        )
    };
    let reports = check_params(&layer, &grads, &loss, EPS, 40, FLOOR);
    let names: Vec<&str> = reports.iter().map(|r| r.tensor.as_str()).collect();
    assert_eq!(
        names,
        [
            "weight_ih_l0",
            "weight_hh_l0",
            "bias_ih_l0",
            "bias_hh_l0",
            "weight_ih_l0_reverse",
            "weight_hh_l0_reverse",
            "bias_ih_l0_reverse",
            "bias_hh_l0_reverse"
        ]
    );
    assert_close(&reports, "BiLSTM");
}

#[test]
fn padded_sequences_match_the_same_sequences_run_alone() {
    let layer = BiLstm::new(3, 5, 0, &mut rng(60));
    let x = random3((7, 3, 3), 61);
    let lengths = [7usize, 4, 2];
    let (y, _) = layer.forward(x.view(), Some(&lengths)).unwrap();
    for (b, &len) in lengths.iter().enumerate() {
        let alone = x.slice(ndarray::s![..len, b..b + 1, ..]);
        let (ya, _) = layer.forward(alone, None).unwrap();
        let diff = (&y.slice(ndarray::s![..len, b..b + 1, ..]) - &ya)
            .mapv(f32::abs)
            .fold(0.0f32, |m, v| m.max(*v));
        assert!(
            diff < 1e-6,
            "sequence {b}: padded and alone differ by {diff}"
        );
        assert!(
            y.slice(ndarray::s![len.., b, ..]).iter().all(|&v| v == 0.0),
            "padding outputs zero"
        );
    }
}

#[test]
fn pyramid_backward_is_the_adjoint_of_forward() {
    // <dy, P x> == <P^T dy, x> for any x and dy, odd length included.
    for steps in [6usize, 7] {
        let x = random3((steps, 2, 3), 70);
        let y = pyramid_reduce(x.view());
        assert_eq!(y.dim(), (steps / 2, 2, 6));
        assert_eq!(y[(1, 1, 4)], x[(3, 1, 1)]);
        let dy = random3(y.dim(), 71);
        let dx = pyramid_reduce_backward(dy.view(), steps);
        let lhs = projection(dy.view().into_dyn(), y.view().into_dyn());
        let rhs = projection(dx.view().into_dyn(), x.view().into_dyn());
        assert!((lhs - rhs).abs() < 1e-9, "{lhs} vs {rhs}");
        if steps % 2 == 1 {
            assert!(dx
                .slice(ndarray::s![steps - 1, .., ..])
                .iter()
                .all(|&v| v == 0.0));
        }
    }
}

#[test]
fn frame_stacking_backward_is_the_adjoint_of_forward() {
    // Every group size, with and without a partial trailing group: output frame t holds
    // input frames kt..kt+k-1 in order, and the trailing frames get no gradient.
    for k in [1usize, 3, 4] {
        for steps in [8usize, 10, 11] {
            let x = random3((steps, 2, 3), 72 + k as u64);
            let y = lasr_nn::stack_frames(x.view(), k);
            assert_eq!(y.dim(), (steps / k, 2, 3 * k));
            if k == 4 {
                assert_eq!(y[(1, 0, 3 * 2 + 1)], x[(4 + 2, 0, 1)]);
            }
            let dy = random3(y.dim(), 73);
            let dx = lasr_nn::stack_frames_backward(dy.view(), steps, k);
            let lhs = projection(dy.view().into_dyn(), y.view().into_dyn());
            let rhs = projection(dx.view().into_dyn(), x.view().into_dyn());
            assert!(
                (lhs - rhs).abs() < 1e-9,
                "k {k}, {steps} steps: {lhs} vs {rhs}"
            );
            for t in steps / k * k..steps {
                assert!(dx.slice(ndarray::s![t, .., ..]).iter().all(|&v| v == 0.0));
            }
            assert_eq!(lasr_nn::stacked_lengths(&[steps, k - 1], k), [steps / k, 0]);
        }
    }
}

#[test]
fn softmax_cross_entropy_gradient_and_value() {
    let logits = lasr_nn::init::uniform((4, 5), 3.0, &mut rng(80));
    let targets = [Some(1), None, Some(4), Some(0)];
    let ce = softmax_cross_entropy(logits.view(), &targets).unwrap();
    assert_eq!(ce.count, 3);
    assert!(
        ce.grad.row(1).iter().all(|&v| v == 0.0),
        "ignored row has no gradient"
    );
    // Each counted row of the gradient sums to zero (softmax minus one-hot).
    for r in [0, 2, 3] {
        assert!(ce.grad.row(r).sum().abs() < 1e-6);
    }
    let x = logits.clone().into_dyn();
    let loss = |l: &ArrayD<f32>| {
        softmax_cross_entropy(l.view().into_dimensionality::<Ix2>().unwrap(), &targets)
            .unwrap()
            .mean()
    };
    assert_close(
        &[check_input(
            &x,
            &ce.grad.clone().into_dyn(),
            &loss,
            1e-2,
            100,
            1e-4,
        )],
        "cross-entropy",
    );
    // Uniform logits give log(V).
    let flat = softmax_cross_entropy(Array2::zeros((2, 5)).view(), &[Some(0), Some(3)]).unwrap();
    assert!((flat.mean() - 5f64.ln()).abs() < 1e-6);
    // Huge logits do not overflow.
    let big = softmax_cross_entropy(ndarray::array![[1e30f32, 0.0]].view(), &[Some(1)]).unwrap();
    assert!(big.sum.is_finite() && big.grad.iter().all(|v| v.is_finite()));
}

#[test]
fn label_smoothed_cross_entropy_gradient_and_value() {
    let logits = lasr_nn::init::uniform((4, 6), 3.0, &mut rng(81));
    let targets = [Some(2), Some(5), None, Some(0)];
    let eps = 0.2f32;
    let ce = lasr_nn::softmax_cross_entropy_smoothed(logits.view(), &targets, eps).unwrap();
    let plain = softmax_cross_entropy(logits.view(), &targets).unwrap();
    // The reported NLL ignores smoothing; the smoothed sum is computed independently
    // here in f64 from its definition: cross-entropy against the smoothed target.
    assert!((ce.sum - plain.sum).abs() < 1e-9);
    let mut expected = 0f64;
    for (r, t) in targets.iter().enumerate() {
        let Some(t) = *t else { continue };
        let row: Vec<f64> = logits.row(r).iter().map(|&v| f64::from(v)).collect();
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        for (k, &l) in row.iter().enumerate() {
            let q = f64::from(eps) / 6.0 + if k == t { 1.0 - f64::from(eps) } else { 0.0 };
            expected += q * (lse - l);
        }
    }
    assert!(
        (ce.smoothed_sum - expected).abs() < 1e-5,
        "{} vs {expected}",
        ce.smoothed_sum
    );
    assert!(ce.smoothed_sum > ce.sum * (1.0 - f64::from(eps)));
    let x = logits.clone().into_dyn();
    let loss = |l: &ArrayD<f32>| {
        let c = lasr_nn::softmax_cross_entropy_smoothed(
            l.view().into_dimensionality::<Ix2>().unwrap(),
            &targets,
            eps,
        )
        .unwrap();
        c.smoothed_sum / c.count as f64
    };
    assert_close(
        &[check_input(
            &x,
            &ce.grad.clone().into_dyn(),
            &loss,
            1e-2,
            100,
            1e-4,
        )],
        "smoothed cross-entropy",
    );
    assert!(ce.grad.row(2).iter().all(|&v| v == 0.0));
    assert!(lasr_nn::softmax_cross_entropy_smoothed(logits.view(), &targets, 1.0).is_err());
}

/// A two-level pyramid listener with an output layer and cross-entropy: gradients
/// flowing through every layer type at once.
#[derive(Clone)]
struct MiniListener {
    l0: BiLstm,
    l1: BiLstm,
    out: Linear,
}

impl MiniListener {
    fn loss(
        &self,
        x: &Array3<f32>,
        lengths: &[usize],
        targets: &[Option<usize>],
    ) -> (f64, MiniListener, Array3<f32>) {
        let (h0, c0) = self.l0.forward(x.view(), Some(lengths)).unwrap();
        let p = pyramid_reduce(h0.view());
        let lengths1 = lasr_nn::pyramid_lengths(lengths);
        let (h1, c1) = self.l1.forward(p.view(), Some(&lengths1)).unwrap();
        let (t, b, d) = h1.dim();
        let flat = h1.view().into_shape_with_order((t * b, d)).unwrap();
        let logits = self.out.forward(flat).unwrap();
        let ce = softmax_cross_entropy(logits.view(), targets).unwrap();
        let mut g = MiniListener {
            l0: self.l0.zeros_like(),
            l1: self.l1.zeros_like(),
            out: self.out.zeros_like(),
        };
        let dflat = self.out.backward(flat, ce.grad.view(), &mut g.out).unwrap();
        let dh1 = dflat.into_shape_with_order((t, b, d)).unwrap();
        let dp = self.l1.backward(&c1, dh1.view(), &mut g.l1).unwrap();
        let dh0 = pyramid_reduce_backward(dp.view(), x.dim().0);
        let dx = self.l0.backward(&c0, dh0.view(), &mut g.l0).unwrap();
        (ce.mean(), g, dx)
    }
}

impl Module for MiniListener {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ndarray::ArrayViewD<'a, f32>)) {
        self.l0.visit(&lasr_nn::module::join(prefix, "l0"), f);
        self.l1.visit(&lasr_nn::module::join(prefix, "l1"), f);
        self.out.visit(&lasr_nn::module::join(prefix, "out"), f);
    }
    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ndarray::ArrayViewMutD<'a, f32>),
    ) {
        self.l0.visit_mut(&lasr_nn::module::join(prefix, "l0"), f);
        self.l1.visit_mut(&lasr_nn::module::join(prefix, "l1"), f);
        self.out.visit_mut(&lasr_nn::module::join(prefix, "out"), f);
    }
    fn zeros_like(&self) -> Self {
        MiniListener {
            l0: self.l0.zeros_like(),
            l1: self.l1.zeros_like(),
            out: self.out.zeros_like(),
        }
    }
}

#[test]
fn a_small_pyramid_listener_end_to_end() {
    let mut g = rng(90);
    let model = MiniListener {
        l0: BiLstm::new(3, 4, 0, &mut g),
        l1: BiLstm::new(16, 4, 0, &mut g),
        out: Linear::new(8, 6, true, &mut g),
    };
    let x = random3((9, 2, 3), 91);
    let lengths = [9usize, 6];
    // 4 reduced frames x 2 sequences; the second has 3 live frames.
    let targets = [
        Some(1),
        Some(5),
        Some(0),
        Some(2),
        Some(3),
        Some(3),
        Some(4),
        None,
    ];
    let (_, grads, dx) = model.loss(&x, &lengths, &targets);
    assert_eq!(model.num_params(), grads.num_params());
    let loss = |m: &MiniListener| m.loss(&x, &lengths, &targets).0;
    // The mean loss is ~1.8, so f32 rounding of the forward pass puts ~5e-6 of noise
    // on each numeric gradient: compare gradients under 1e-3 absolutely.
    assert_close(
        &check_params(&model, &grads, &loss, EPS, 30, FLOOR),
        "mini listener",
    );
    let loss_x = |xx: &ArrayD<f32>| {
        model
            .loss(
                &xx.clone().into_dimensionality::<Ix3>().unwrap(),
                &lengths,
                &targets,
            )
            .0
    };
    assert_close(
        &[check_input(
            &x.clone().into_dyn(),
            &dx.into_dyn(),
            &loss_x,
            EPS,
            60,
            FLOOR,
        )],
        "mini listener input",
    );
}

/// Three steps of an LSTM cell fed back its own state; loss on every step's output.
fn cell_unrolled(
    cell: &lasr_nn::LstmCell,
    xs: &[Array2<f32>],
    rs: &[Array2<f32>],
) -> (f64, lasr_nn::LstmCell, Vec<Array2<f32>>) {
    let prepared = cell.prepare();
    let batch = xs[0].nrows();
    let hd = cell.hidden();
    let mut h = Array2::zeros((batch, hd));
    let mut c = Array2::from_elem((batch, hd), 0.3f32);
    let mut caches = Vec::new();
    let mut loss = 0.0;
    for (x, r) in xs.iter().zip(rs) {
        let (h2, c2, cache) = cell
            .forward(&prepared, x.view(), h.view(), c.view())
            .unwrap();
        loss += projection(r.view().into_dyn(), h2.view().into_dyn());
        caches.push(cache);
        h = h2;
        c = c2;
    }
    let mut grads = cell.zeros_like();
    let mut dh_next = Array2::<f32>::zeros((batch, hd));
    let mut dc_next = Array2::<f32>::zeros((batch, hd));
    let mut dxs = vec![Array2::zeros((0, 0)); xs.len()];
    for t in (0..xs.len()).rev() {
        let dh = &rs[t] + &dh_next;
        let (dx, dhp, dcp) = cell
            .backward(&caches[t], dh.view(), dc_next.view(), &mut grads)
            .unwrap();
        dxs[t] = dx;
        dh_next = dhp;
        dc_next = dcp;
    }
    (loss, grads, dxs)
}

#[test]
fn lstm_cell_unrolled_over_three_steps() {
    let cell = lasr_nn::LstmCell::new(5, 4, &mut rng(100));
    let xs: Vec<Array2<f32>> = (0..3)
        .map(|i| lasr_nn::init::uniform((2, 5), 1.0, &mut rng(101 + i)))
        .collect();
    let rs: Vec<Array2<f32>> = (0..3)
        .map(|i| lasr_nn::init::uniform((2, 4), 1.0, &mut rng(111 + i)))
        .collect();
    let (_, grads, dxs) = cell_unrolled(&cell, &xs, &rs);
    let names: Vec<String> = {
        let mut v = Vec::new();
        cell.visit("cell0", &mut |n, _| v.push(n));
        v
    };
    assert_eq!(
        names,
        [
            "cell0.weight_ih",
            "cell0.weight_hh",
            "cell0.bias_ih",
            "cell0.bias_hh"
        ]
    );
    let loss = |m: &lasr_nn::LstmCell| cell_unrolled(m, &xs, &rs).0;
    assert_close(
        &check_params(&cell, &grads, &loss, EPS, 60, FLOOR),
        "LSTMCell",
    );
    // The first step's input gradient reaches through all three steps.
    let loss_x = |x0: &ArrayD<f32>| {
        let mut xs2 = xs.clone();
        xs2[0] = x0.clone().into_dimensionality::<Ix2>().unwrap();
        cell_unrolled(&cell, &xs2, &rs).0
    };
    assert_close(
        &[check_input(
            &xs[0].clone().into_dyn(),
            &dxs[0].clone().into_dyn(),
            &loss_x,
            EPS,
            20,
            FLOOR,
        )],
        "LSTMCell input",
    );
}

/// Keys once, two decoder steps, loss on both contexts; with `packed`, the query
/// products run on weights packed by `prepare` (from `att` as it is, so finite
/// differences see their perturbations too).
fn attend(
    packed: bool,
    att: &lasr_nn::AdditiveAttention,
    h: &Array3<f32>,
    ss: &[Array2<f32>],
    rs: &[Array2<f32>],
    lengths: &[usize],
) -> (
    f64,
    lasr_nn::AdditiveAttention,
    Array3<f32>,
    Vec<Array2<f32>>,
) {
    let keys = att.keys(h.view()).unwrap();
    let prepared = packed.then(|| att.prepare());
    let mut loss = 0.0;
    let mut caches = Vec::new();
    // Location-aware attention reads the previous step's weights.
    let mut prev = lasr_nn::AdditiveAttention::initial_weights(h.dim().0, lengths);
    for (s, r) in ss.iter().zip(rs) {
        let (ctx, cache) = att
            .step(
                prepared.as_ref(),
                h.view(),
                keys.view(),
                s.view(),
                Some(lengths),
                Some(prev.view()),
            )
            .unwrap();
        prev = cache.alpha().to_owned();
        loss += projection(r.view().into_dyn(), ctx.view().into_dyn());
        for (b, &len) in lengths.iter().enumerate() {
            let a = cache.alpha();
            assert!((a.row(b).sum() - 1.0).abs() < 1e-5);
            assert!(
                a.row(b).iter().skip(len).all(|&w| w == 0.0),
                "no weight beyond the length"
            );
        }
        caches.push(cache);
    }
    let mut grads = att.zeros_like();
    let mut dh = Array3::zeros(h.raw_dim());
    let mut dkeys = Array3::zeros(keys.raw_dim());
    let mut dss = Vec::new();
    let mut d_alpha: Option<Array2<f32>> = None;
    for (cache, r) in caches.iter().zip(rs).rev() {
        let (ds, dprev) = att
            .step_backward(
                prepared.as_ref(),
                cache,
                h.view(),
                keys.view(),
                r.view(),
                d_alpha.as_ref().map(|d| d.view()),
                dkeys.view_mut(),
                &mut grads,
            )
            .unwrap();
        dss.push(ds);
        d_alpha = dprev;
    }
    dss.reverse();
    let alphas: Vec<_> = caches.iter().map(|c| c.alpha()).collect();
    let views: Vec<_> = rs.iter().map(|r| r.view()).collect();
    let d_ctx = ndarray::stack(ndarray::Axis(0), &views).unwrap();
    att.contexts_backward(&alphas, d_ctx.view(), dh.view_mut())
        .unwrap();
    dh += &att
        .keys_backward(h.view(), dkeys.view(), &mut grads)
        .unwrap();
    (loss, grads, dh, dss)
}

#[test]
fn additive_attention() {
    for packed in [false, true] {
        attention_case(
            packed,
            lasr_nn::AdditiveAttention::new(6, 5, 4, &mut rng(120)),
            2,
        );
    }
}

#[test]
fn location_aware_attention_over_three_steps() {
    // Width 5 > the shortest sequence (4 positions): filters hang over both ends.
    let att = lasr_nn::AdditiveAttention::new_location(6, 5, 4, 3, 5, &mut rng(140));
    for packed in [false, true] {
        attention_case(packed, att.clone(), 3);
    }
}

fn attention_case(packed: bool, att: lasr_nn::AdditiveAttention, steps: u64) {
    let h = random3((7, 2, 6), 121);
    let ss: Vec<Array2<f32>> = (0..steps)
        .map(|i| lasr_nn::init::uniform((2, 5), 1.0, &mut rng(122 + i)))
        .collect();
    let rs: Vec<Array2<f32>> = (0..steps)
        .map(|i| lasr_nn::init::uniform((2, 6), 1.0, &mut rng(130 + i)))
        .collect();
    let lengths = [7usize, 4];
    let (_, grads, dh, dss) = attend(packed, &att, &h, &ss, &rs, &lengths);
    let loss = |m: &lasr_nn::AdditiveAttention| attend(packed, m, &h, &ss, &rs, &lengths).0;
    let reports = check_params(&att, &grads, &loss, EPS, 40, FLOOR);
    let names: Vec<&str> = reports.iter().map(|r| r.tensor.as_str()).collect();
    let mut expected = vec!["att_h.weight", "att_h.bias", "att_s.weight", "att_v.weight"];
    if att.location.is_some() {
        expected.extend(["att_conv.weight", "att_loc.weight"]);
    }
    assert_eq!(names, expected);
    assert_close(&reports, "attention");
    let loss_h = |hh: &ArrayD<f32>| {
        attend(
            packed,
            &att,
            &hh.clone().into_dimensionality::<Ix3>().unwrap(),
            &ss,
            &rs,
            &lengths,
        )
        .0
    };
    assert_close(
        &[check_input(
            &h.clone().into_dyn(),
            &dh.clone().into_dyn(),
            &loss_h,
            EPS,
            84,
            FLOOR,
        )],
        "attention listener states",
    );
    // Positions beyond a sequence's length get no gradient.
    assert!(dh.slice(ndarray::s![4.., 1, ..]).iter().all(|&v| v == 0.0));
    let loss_s = |s0: &ArrayD<f32>| {
        let mut s2 = ss.clone();
        s2[0] = s0.clone().into_dimensionality::<Ix2>().unwrap();
        attend(packed, &att, &h, &s2, &rs, &lengths).0
    };
    assert_close(
        &[check_input(
            &ss[0].clone().into_dyn(),
            &dss[0].clone().into_dyn(),
            &loss_s,
            EPS,
            10,
            FLOOR,
        )],
        "attention decoder state",
    );
}

macro_rules! recurrent_check {
    ($test:ident, $ty:ty, $tensors:expr) => {
        #[test]
        fn $test() {
            for (reverse, lengths, seed) in [
                (false, None, 200u64),
                (true, None, 210),
                (false, Some(vec![6usize, 2, 4]), 220),
                (true, Some(vec![3usize, 6, 1]), 230),
            ] {
                let layer = <$ty>::new(5, 4, reverse, "_l0", &mut rng(seed));
                let x = random3((6, 3, 5), seed + 1);
                let r = random3((6, 3, 4), seed + 2);
                let (y, cache) = layer.forward(x.view(), lengths.as_deref()).unwrap();
                let mut grads = layer.zeros_like();
                let dx = layer.backward(&cache, r.view(), &mut grads).unwrap();
                let loss = |m: &$ty| {
                    projection(
                        r.view().into_dyn(),
                        m.forward(x.view(), lengths.as_deref())
                            .unwrap()
                            .0
                            .view()
                            .into_dyn(),
                    )
                };
                let what = format!("{} reverse={reverse} lengths={lengths:?}", stringify!($ty));
                // Numeric GRU gradients wobble by ~1e-5 with eps (f32 rounding of the
                // forward pass), so gradients under 2e-3 are compared absolutely.
                let reports = check_params(&layer, &grads, &loss, EPS, 60, 2e-3);
                let names: Vec<&str> = reports.iter().map(|r| r.tensor.as_str()).collect();
                assert_eq!(names, $tensors);
                assert_close(&reports, &what);
                let loss_x = |xx: &ArrayD<f32>| {
                    let xx = xx.view().into_dimensionality::<Ix3>().unwrap();
                    projection(
                        r.view().into_dyn(),
                        layer
                            .forward(xx, lengths.as_deref())
                            .unwrap()
                            .0
                            .view()
                            .into_dyn(),
                    )
                };
                assert_close(
                    &[check_input(
                        &x.clone().into_dyn(),
                        &dx.into_dyn(),
                        &loss_x,
                        EPS,
                        90,
                        FLOOR,
                    )],
                    &what,
                );
                // Padded sequences give what they give alone; padding outputs zero.
                if let Some(l) = &lengths {
                    for (b, &len) in l.iter().enumerate() {
                        let (alone, _) = layer
                            .forward(x.slice(ndarray::s![..len, b..b + 1, ..]), None)
                            .unwrap();
                        let d = (&y.slice(ndarray::s![..len, b..b + 1, ..]) - &alone)
                            .mapv(f32::abs)
                            .fold(0.0f32, |m, v| m.max(*v));
                        assert!(d < 1e-6, "{what}: sequence {b} differs by {d}");
                        assert!(y.slice(ndarray::s![len.., b, ..]).iter().all(|&v| v == 0.0));
                    }
                }
            }
        }
    };
}

recurrent_check!(
    gru,
    lasr_nn::Gru,
    ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
);
recurrent_check!(
    elman_rnn,
    lasr_nn::Elman,
    ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
);
