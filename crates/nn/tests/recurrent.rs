//! GRU and Elman layers wherever the LSTM goes: bidirectional layers on padded
//! batches, step-wise cells for decoders, and the cache-free inference paths; and the
//! generic bidirectional layer over the LSTM against `BiLstm`.

use lasr_nn::gradcheck::{check_input, check_params, projection, Discrepancy};
use lasr_nn::{
    BiElman, BiGru, BiLstm, Bidirectional, Elman, ElmanCell, ElmanCellCache, Gru, GruCell,
    GruCellCache, Lstm, Module, PreparedElmanCell, PreparedGruCell, Recurrent, WeightFormat,
};
use ndarray::{s, Array2, Array3, ArrayD, ArrayView2, Axis, Ix2, Ix3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const EPS: f32 = 1e-2;
/// Numeric GRU and Elman gradients wobble by ~1e-5 with eps (f32 rounding of the
/// forward pass), so gradients under 2e-3 are compared absolutely (as in gradcheck.rs).
const FLOOR: f64 = 2e-3;
const TOL: f64 = 1e-2;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random2(shape: (usize, usize), seed: u64) -> Array2<f32> {
    lasr_nn::init::uniform(shape, 1.0, &mut rng(seed))
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

fn names(m: &impl Module, prefix: &str) -> Vec<String> {
    let mut v = Vec::new();
    m.visit(prefix, &mut |n, _| v.push(n));
    v
}

fn max_abs_diff<D: ndarray::Dimension>(
    a: ndarray::ArrayView<f32, D>,
    b: ndarray::ArrayView<f32, D>,
) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

const BI_NAMES: [&str; 8] = [
    "weight_ih_l0",
    "weight_hh_l0",
    "bias_ih_l0",
    "bias_hh_l0",
    "weight_ih_l0_reverse",
    "weight_hh_l0_reverse",
    "bias_ih_l0_reverse",
    "bias_hh_l0_reverse",
];

/// Finite differences of every parameter and the input of a bidirectional layer on a
/// padded batch whose longest sequence is not the first.
fn bidirectional_gradients<R: Recurrent>(seed: u64) {
    let layer = Bidirectional::<R>::new(3, 4, 0, &mut rng(seed));
    let x = random3((6, 3, 3), seed + 1);
    let r = random3((6, 3, 8), seed + 2);
    let lengths = [2usize, 6, 4];
    let (_, cache) = layer.forward(x.view(), Some(&lengths)).unwrap();
    let mut grads = layer.zeros_like();
    let dx = layer.backward(&cache, r.view(), &mut grads).unwrap();
    let loss = |m: &Bidirectional<R>| {
        projection(
            r.view().into_dyn(),
            m.forward(x.view(), Some(&lengths))
                .unwrap()
                .0
                .view()
                .into_dyn(),
        )
    };
    let what = format!("Bi{}", R::KIND);
    let reports = check_params(&layer, &grads, &loss, EPS, 40, FLOOR);
    let got: Vec<&str> = reports.iter().map(|r| r.tensor.as_str()).collect();
    assert_eq!(got, BI_NAMES);
    assert_close(&reports, &what);
    let loss_x = |xx: &ArrayD<f32>| {
        let xx = xx.view().into_dimensionality::<Ix3>().unwrap();
        projection(
            r.view().into_dyn(),
            layer
                .forward(xx, Some(&lengths))
                .unwrap()
                .0
                .view()
                .into_dyn(),
        )
    };
    assert_close(
        &[check_input(
            &x.clone().into_dyn(),
            &dx.clone().into_dyn(),
            &loss_x,
            EPS,
            54,
            FLOOR,
        )],
        &format!("{what} input"),
    );
    for (b, &len) in lengths.iter().enumerate() {
        assert!(
            dx.slice(s![len.., b, ..]).iter().all(|&v| v == 0.0),
            "{what}: padding of sequence {b} has a gradient"
        );
    }
}

#[test]
fn bigru_gradients_on_a_padded_batch() {
    bidirectional_gradients::<Gru>(300);
}

#[test]
fn bielman_gradients_on_a_padded_batch() {
    bidirectional_gradients::<Elman>(310);
}

/// A padded batch gives each sequence exactly what it gives alone: outputs, input
/// gradients and (summed over sequences) parameter gradients; padding outputs zero and
/// gets no gradient.
fn padded_batch_matches_sequences_alone<R: Recurrent>(seed: u64) {
    let layer = Bidirectional::<R>::new(3, 5, 1, &mut rng(seed));
    let x = random3((7, 3, 3), seed + 1);
    let r = random3((7, 3, 10), seed + 2);
    let lengths = [4usize, 7, 2];
    let what = format!("Bi{}", R::KIND);
    let (y, cache) = layer.forward(x.view(), Some(&lengths)).unwrap();
    let mut grads = layer.zeros_like();
    let dx = layer.backward(&cache, r.view(), &mut grads).unwrap();
    let mut summed = layer.zeros_like();
    for (b, &len) in lengths.iter().enumerate() {
        let (ya, ca) = layer
            .forward(x.slice(s![..len, b..b + 1, ..]), None)
            .unwrap();
        let dxa = layer
            .backward(&ca, r.slice(s![..len, b..b + 1, ..]), &mut summed)
            .unwrap();
        let d = max_abs_diff(y.slice(s![..len, b..b + 1, ..]), ya.view());
        assert!(d < 1e-6, "{what}: sequence {b} output differs by {d}");
        let d = max_abs_diff(dx.slice(s![..len, b..b + 1, ..]), dxa.view());
        assert!(
            d < 1e-6,
            "{what}: sequence {b} input gradient differs by {d}"
        );
        assert!(y.slice(s![len.., b, ..]).iter().all(|&v| v == 0.0));
        assert!(dx.slice(s![len.., b, ..]).iter().all(|&v| v == 0.0));
    }
    let mut batch = Vec::new();
    grads.visit("", &mut |n, t| batch.push((n, t.to_owned())));
    let mut k = 0;
    summed.visit("", &mut |n, t| {
        let (bn, bt) = &batch[k];
        assert_eq!(&n, bn);
        let d = bt
            .iter()
            .zip(t.iter())
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(
            d < 1e-5,
            "{what}: {n} differs by {d} from the per-sequence sum"
        );
        k += 1;
    });
    assert_eq!(k, 8);
    // The comparison above can fail: without lengths, the reverse direction of a short
    // sequence starts in its padding, and its outputs move far beyond the tolerance.
    let (leaky, _) = layer.forward(x.view(), None).unwrap();
    let (alone, _) = layer.forward(x.slice(s![..2, 2..3, ..]), None).unwrap();
    let d = max_abs_diff(leaky.slice(s![..2, 2..3, ..]), alone.view());
    assert!(d > 1e-3, "{what}: padding leaking in went unnoticed ({d})");
}

#[test]
fn bigru_padded_batch_matches_sequences_alone() {
    padded_batch_matches_sequences_alone::<Gru>(320);
}

#[test]
fn bielman_padded_batch_matches_sequences_alone() {
    padded_batch_matches_sequences_alone::<Elman>(330);
}

#[test]
fn bidirectional_lstm_padded_batch_matches_sequences_alone() {
    padded_batch_matches_sequences_alone::<Lstm>(340);
}

/// Without the input gradient (a first layer's backward in training), the parameter
/// gradients are the very bits of the full backward, and nothing is returned.
fn parameter_gradients_alone<R: Recurrent>(seed: u64) {
    let layer = Bidirectional::<R>::new(3, 5, 1, &mut rng(seed));
    let x = random3((6, 2, 3), seed + 1);
    let r = random3((6, 2, 10), seed + 2);
    let (_, cache) = layer.forward(x.view(), Some(&[6, 3])).unwrap();
    let mut full = layer.zeros_like();
    let dx = layer
        .backward_to(&cache, r.view(), &mut full, true)
        .unwrap()
        .expect("asked for");
    assert!(dx.iter().any(|&v| v != 0.0));
    let mut alone = layer.zeros_like();
    let none = layer
        .backward_to(&cache, r.view(), &mut alone, false)
        .unwrap();
    assert!(none.is_none());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    full.visit("", &mut |n, t| a.push((n, t.to_owned())));
    alone.visit("", &mut |n, t| b.push((n, t.to_owned())));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "Bi{}: parameter gradients differ", R::KIND);
    assert!(a.iter().all(|(_, t)| t.iter().any(|&v| v != 0.0)));
}

#[test]
fn parameter_gradients_alone_match_the_full_backward() {
    parameter_gradients_alone::<Lstm>(300);
    parameter_gradients_alone::<Gru>(310);
    parameter_gradients_alone::<Elman>(320);
}

/// `infer` on one sequence equals the training forward pass on a batch of one.
fn infer_matches_forward<R: Recurrent>(seed: u64) {
    let mut g = rng(seed);
    // Widths that are and are not multiples of the kernel's 8 rows and 16 lanes.
    for (steps, input, hidden) in [(1, 3, 2), (7, 20, 13), (40, 80, 64)] {
        let layer = Bidirectional::<R>::new(input, hidden, 0, &mut g);
        let x = lasr_nn::init::uniform((steps, input), 1.0, &mut g);
        let (y, _) = layer
            .forward(x.view().insert_axis(Axis(1)), Some(&[steps]))
            .unwrap();
        let y = y.index_axis_move(Axis(1), 0);
        let fast = layer.infer(x.view()).unwrap();
        let d = max_rel_diff(&fast, &y);
        assert!(
            d < 1e-5,
            "Bi{} [{steps}, {input}] -> {hidden}: differs by {d}",
            R::KIND
        );
        // A recurrent weight rounded to bfloat16 moves the output a little (from the
        // second step on: the first has no recurrent product).
        let bf16 = layer
            .infer_packed(x.view(), &layer.pack(WeightFormat::Bf16))
            .unwrap();
        let d = max_rel_diff(&bf16, &y);
        assert!(
            (steps == 1 || d > 0.0) && d < 2e-2,
            "Bi{} bf16 [{steps}, {input}] -> {hidden}: differs by {d}",
            R::KIND
        );
        // int8 rounds the weights and, in the input projections too, every input
        // vector: the output moves more, but still little, from the first step on.
        let int8 = layer
            .infer_packed(x.view(), &layer.pack(WeightFormat::Int8))
            .unwrap();
        let d = max_rel_diff(&int8, &y);
        assert!(
            d > 0.0 && d < 5e-2,
            "Bi{} int8 [{steps}, {input}] -> {hidden}: differs by {d}",
            R::KIND
        );
        // Both directions contribute: the reverse half is not a copy of the forward one.
        assert!(steps == 1 || fast.column(0) != fast.column(hidden));
    }
    let layer = Bidirectional::<R>::new(4, 3, 0, &mut g);
    assert!(layer.infer(Array2::zeros((5, 6)).view()).is_err());
    // A packing of another layer's weights is refused, naming the layer: another
    // hidden width, or (int8, which packs the input projection) another input width.
    for (input, hidden, format) in [(4, 5, WeightFormat::F32), (6, 3, WeightFormat::Int8)] {
        let other = Bidirectional::<R>::new(input, hidden, 0, &mut g).pack(format);
        let err = layer
            .infer_packed(Array2::zeros((5, 4)).view(), &other)
            .unwrap_err();
        assert!(err.to_string().contains(R::KIND), "{format}: {err}");
    }
}

#[test]
fn bigru_infer_equals_the_training_forward() {
    infer_matches_forward::<Gru>(350);
}

#[test]
fn bielman_infer_equals_the_training_forward() {
    infer_matches_forward::<Elman>(360);
}

/// What the cell tests need from `GruCell` and `ElmanCell`, whose methods have the same
/// shapes but no trait in the library.
trait Cell: Module + Clone {
    type Prepared;
    type Cache;
    const NAME: &'static str;
    fn create(input: usize, hidden: usize, seed: u64) -> Self;
    fn prep(&self) -> Self::Prepared;
    fn prep_packed(&self, format: WeightFormat) -> Self::Prepared;
    fn fwd(
        &self,
        p: &Self::Prepared,
        x: ArrayView2<f32>,
        h: ArrayView2<f32>,
    ) -> (Array2<f32>, Self::Cache);
    fn bwd(&self, c: &Self::Cache, dh: ArrayView2<f32>, g: &mut Self)
        -> (Array2<f32>, Array2<f32>);
    fn stp(
        &self,
        p: Option<&Self::Prepared>,
        x: ArrayView2<f32>,
        h: ArrayView2<f32>,
    ) -> lasr_nn::Result<Array2<f32>>;
}

macro_rules! cell {
    ($ty:ident, $prepared:ident, $cache:ident, $name:literal) => {
        impl Cell for $ty {
            type Prepared = $prepared;
            type Cache = $cache;
            const NAME: &'static str = $name;
            fn create(input: usize, hidden: usize, seed: u64) -> Self {
                $ty::new(input, hidden, &mut rng(seed))
            }
            fn prep(&self) -> $prepared {
                self.prepare()
            }
            fn prep_packed(&self, format: WeightFormat) -> $prepared {
                self.prepare_packed(format)
            }
            fn fwd(
                &self,
                p: &$prepared,
                x: ArrayView2<f32>,
                h: ArrayView2<f32>,
            ) -> (Array2<f32>, $cache) {
                self.forward(p, x, h).unwrap()
            }
            fn bwd(
                &self,
                c: &$cache,
                dh: ArrayView2<f32>,
                g: &mut Self,
            ) -> (Array2<f32>, Array2<f32>) {
                self.backward(c, dh, g).unwrap()
            }
            fn stp(
                &self,
                p: Option<&$prepared>,
                x: ArrayView2<f32>,
                h: ArrayView2<f32>,
            ) -> lasr_nn::Result<Array2<f32>> {
                self.step(p, x, h)
            }
        }
    };
}

cell!(GruCell, PreparedGruCell, GruCellCache, "GRUCell");
cell!(ElmanCell, PreparedElmanCell, ElmanCellCache, "RNNCell");

/// Steps of a cell fed back its own state from `h0`; loss on every step's output.
/// Returns the loss, the parameter gradients, each step's input gradient and `dL/dh0`.
fn cell_unrolled<C: Cell>(
    cell: &C,
    h0: &Array2<f32>,
    xs: &[Array2<f32>],
    rs: &[Array2<f32>],
) -> (f64, C, Vec<Array2<f32>>, Array2<f32>) {
    let prepared = cell.prep();
    let mut h = h0.clone();
    let mut caches = Vec::new();
    let mut loss = 0.0;
    for (x, r) in xs.iter().zip(rs) {
        let (h2, cache) = cell.fwd(&prepared, x.view(), h.view());
        loss += projection(r.view().into_dyn(), h2.view().into_dyn());
        caches.push(cache);
        h = h2;
    }
    let mut grads = cell.zeros_like();
    let mut dh_next = Array2::<f32>::zeros(h0.raw_dim());
    let mut dxs = vec![Array2::zeros((0, 0)); xs.len()];
    for t in (0..xs.len()).rev() {
        let dh = &rs[t] + &dh_next;
        let (dx, dhp) = cell.bwd(&caches[t], dh.view(), &mut grads);
        dxs[t] = dx;
        dh_next = dhp;
    }
    (loss, grads, dxs, dh_next)
}

/// Finite differences through three chained steps: every parameter, the first step's
/// input and the initial state (which reaches the loss only through `dh_prev`).
/// Gradients under `floor` are compared absolutely.
fn cell_gradients<C: Cell>(seed: u64, floor: f64) {
    let cell = C::create(5, 4, seed);
    let h0 = random2((2, 4), seed + 1);
    let xs: Vec<Array2<f32>> = (0..3).map(|i| random2((2, 5), seed + 10 + i)).collect();
    let rs: Vec<Array2<f32>> = (0..3).map(|i| random2((2, 4), seed + 20 + i)).collect();
    let (_, grads, dxs, dh0) = cell_unrolled(&cell, &h0, &xs, &rs);
    assert_eq!(
        names(&cell, "cell0"),
        [
            "cell0.weight_ih",
            "cell0.weight_hh",
            "cell0.bias_ih",
            "cell0.bias_hh"
        ]
    );
    let loss = |m: &C| cell_unrolled(m, &h0, &xs, &rs).0;
    assert_close(&check_params(&cell, &grads, &loss, EPS, 60, floor), C::NAME);
    let loss_x = |x0: &ArrayD<f32>| {
        let mut xs2 = xs.clone();
        xs2[0] = x0.clone().into_dimensionality::<Ix2>().unwrap();
        cell_unrolled(&cell, &h0, &xs2, &rs).0
    };
    assert_close(
        &[check_input(
            &xs[0].clone().into_dyn(),
            &dxs[0].clone().into_dyn(),
            &loss_x,
            EPS,
            10,
            floor,
        )],
        &format!("{} input", C::NAME),
    );
    let loss_h = |hh: &ArrayD<f32>| {
        let hh = hh.clone().into_dimensionality::<Ix2>().unwrap();
        cell_unrolled(&cell, &hh, &xs, &rs).0
    };
    assert_close(
        &[check_input(
            &h0.clone().into_dyn(),
            &dh0.into_dyn(),
            &loss_h,
            EPS,
            8,
            floor,
        )],
        &format!("{} initial state", C::NAME),
    );
}

#[test]
fn gru_cell_unrolled_over_three_steps() {
    cell_gradients::<GruCell>(400, FLOOR);
}

#[test]
fn elman_cell_unrolled_over_three_steps() {
    // Here eps = 1e-2 itself is too coarse for the smallest gradients: weight_ih[2, 0]
    // is -2.828e-3 analytically, and the central difference approaches it
    // quadratically in eps (-3.031e-3, -2.886e-3, -2.850e-3 at eps 2e-2, 1e-2, 5e-3;
    // smaller eps drown in f32 rounding). That 6e-5 truncation error is 1% of such a
    // gradient, so gradients under 1e-2 are compared absolutely.
    cell_gradients::<ElmanCell>(430, 1e-2);
}

/// The cache-free `step` equals `forward`, for one row (matrix-vector products on the
/// stored or packed weights) and several (gemm, with and without prepared weights).
/// With weights packed in bfloat16, one row and several agree with each other and
/// stay near the f32 result.
fn step_matches_forward<C: Cell>(seed: u64) {
    let cell = C::create(21, 19, seed);
    let prepared = cell.prep();
    let packed = cell.prep_packed(WeightFormat::F32);
    let bf16 = cell.prep_packed(WeightFormat::Bf16);
    let x3 = random2((3, 21), seed + 3);
    let h3 = random2((3, 19), seed + 13);
    for rows in [1, 3] {
        let x = x3.slice(s![..rows, ..]);
        let h = h3.slice(s![..rows, ..]);
        let (h1, _) = cell.fwd(&prepared, x, h);
        for p in [Some(&prepared), Some(&packed), None] {
            let h2 = cell.stp(p, x, h).unwrap();
            let d = max_rel_diff(&h2, &h1);
            assert!(d < 1e-5, "{} rows={rows}: differs by {d}", C::NAME);
        }
        let h16 = cell.stp(Some(&bf16), x, h).unwrap();
        let d = max_rel_diff(&h16, &h1);
        assert!(
            d > 0.0 && d < 2e-2,
            "{} bf16 rows={rows}: differs by {d}",
            C::NAME
        );
    }
    // Row 0 alone (packed products) equals row 0 of three (gemm on rounded weights).
    let one = cell
        .stp(Some(&bf16), x3.slice(s![..1, ..]), h3.slice(s![..1, ..]))
        .unwrap();
    let three = cell.stp(Some(&bf16), x3.view(), h3.view()).unwrap();
    let d = max_rel_diff(&one, &three.slice(s![..1, ..]).to_owned());
    assert!(d < 1e-5, "{} bf16: one row vs three differ by {d}", C::NAME);
    // Weights packed from a cell of another size are refused, not read out of bounds.
    let other = C::create(21, 7, seed).prep_packed(WeightFormat::F32);
    let err = cell
        .stp(Some(&other), x3.slice(s![..1, ..]), h3.slice(s![..1, ..]))
        .unwrap_err();
    assert!(err.to_string().contains("prepared"), "{err}");
    let x = Array2::zeros((1, 20));
    let h = Array2::zeros((1, 19));
    assert!(cell.stp(Some(&prepared), x.view(), h.view()).is_err());
    let x = Array2::zeros((2, 21));
    assert!(cell.stp(None, x.view(), h.view()).is_err());
}

#[test]
fn gru_cell_step_equals_the_training_forward() {
    step_matches_forward::<GruCell>(460);
}

#[test]
fn elman_cell_step_equals_the_training_forward() {
    step_matches_forward::<ElmanCell>(470);
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// `w[row] · v + b[row]` in f64.
fn affine(w: &Array2<f32>, b: &ndarray::Array1<f32>, row: usize, v: &[f64]) -> f64 {
    f64::from(b[row])
        + w.row(row)
            .iter()
            .zip(v)
            .map(|(&a, &c)| f64::from(a) * c)
            .sum::<f64>()
}

/// PyTorch's `nn.GRUCell` in f64, written from its documentation:
/// `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))` (reset after the product).
fn gru_reference(cell: &GruCell, x: &[f64], h: &[f64]) -> Vec<f64> {
    let hd = cell.hidden();
    let (wi, wh, bi, bh) = (
        &cell.weight_ih,
        &cell.weight_hh,
        &cell.bias_ih,
        &cell.bias_hh,
    );
    (0..hd)
        .map(|j| {
            let r = sigmoid(affine(wi, bi, j, x) + affine(wh, bh, j, h));
            let z = sigmoid(affine(wi, bi, hd + j, x) + affine(wh, bh, hd + j, h));
            let n = (affine(wi, bi, 2 * hd + j, x) + r * affine(wh, bh, 2 * hd + j, h)).tanh();
            (1.0 - z) * n + z * h[j]
        })
        .collect()
}

/// PyTorch's `nn.RNNCell` (tanh) in f64.
fn elman_reference(cell: &ElmanCell, x: &[f64], h: &[f64]) -> Vec<f64> {
    (0..cell.hidden())
        .map(|j| {
            (affine(&cell.weight_ih, &cell.bias_ih, j, x)
                + affine(&cell.weight_hh, &cell.bias_hh, j, h))
            .tanh()
        })
        .collect()
}

fn to_f64(v: ndarray::ArrayView1<f32>) -> Vec<f64> {
    v.iter().map(|&a| f64::from(a)).collect()
}

/// A sequence layer is the cell applied step by step from a zero state; both follow
/// PyTorch's equations (checked against an f64 transcription of them). A GRU that
/// applied the reset gate before `W_hn` (the other published form) would fail here.
#[test]
fn gru_and_elman_follow_pytorch_equations() {
    // 6 runs the gate loop's remainder alone; 35 its 16-unit blocks and a remainder.
    for (hidden, seed) in [(6, 500), (35, 510)] {
        gru_and_elman_case(hidden, seed);
    }
}

fn gru_and_elman_case(hidden: usize, seed: u64) {
    let (steps, input) = (4, 5);
    let x = random2((steps, input), seed);
    for reverse in [false, true] {
        let gru = Gru::new(input, hidden, reverse, "_l0", &mut rng(seed + 1));
        let cell = GruCell {
            weight_ih: gru.weight_ih.clone(),
            weight_hh: gru.weight_hh.clone(),
            bias_ih: gru.bias_ih.clone(),
            bias_hh: gru.bias_hh.clone(),
        };
        let (y, _) = gru.forward(x.view().insert_axis(Axis(1)), None).unwrap();
        let y = y.index_axis_move(Axis(1), 0);
        let elman = Elman::new(input, hidden, reverse, "_l0", &mut rng(seed + 2));
        let ecell = ElmanCell {
            weight_ih: elman.weight_ih.clone(),
            weight_hh: elman.weight_hh.clone(),
            bias_ih: elman.bias_ih.clone(),
            bias_hh: elman.bias_hh.clone(),
        };
        let (ye, _) = elman.forward(x.view().insert_axis(Axis(1)), None).unwrap();
        let ye = ye.index_axis_move(Axis(1), 0);
        let order: Vec<usize> = if reverse {
            (0..steps).rev().collect()
        } else {
            (0..steps).collect()
        };
        let (mut h, mut he) = (vec![0.0; hidden], vec![0.0; hidden]);
        let (mut hc, mut hec) = (Array2::zeros((1, hidden)), Array2::zeros((1, hidden)));
        for t in order {
            let xt = to_f64(x.row(t));
            h = gru_reference(&cell, &xt, &h);
            he = elman_reference(&ecell, &xt, &he);
            hc = cell
                .step(None, x.slice(s![t..t + 1, ..]), hc.view())
                .unwrap();
            hec = ecell
                .step(None, x.slice(s![t..t + 1, ..]), hec.view())
                .unwrap();
            for j in 0..hidden {
                for (got, want, what) in [
                    (y[(t, j)], h[j], "GRU"),
                    (hc[(0, j)], h[j], "GRUCell"),
                    (ye[(t, j)], he[j], "RNN"),
                    (hec[(0, j)], he[j], "RNNCell"),
                ] {
                    assert!(
                        (f64::from(got) - want).abs() < 1e-5,
                        "{what} reverse={reverse} step {t} unit {j}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// PyTorch's `nn.LSTMCell` in f64, written from its documentation (gates packed
/// `i, f, g, o`): returns the new `h` and `c`.
fn lstm_reference(lstm: &Lstm, x: &[f64], h: &[f64], c: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let hd = lstm.hidden();
    let gate = |k: usize, j: usize| {
        affine(&lstm.weight_ih, &lstm.bias_ih, k * hd + j, x)
            + affine(&lstm.weight_hh, &lstm.bias_hh, k * hd + j, h)
    };
    (0..hd)
        .map(|j| {
            let (i, f) = (sigmoid(gate(0, j)), sigmoid(gate(1, j)));
            let (g, o) = (gate(2, j).tanh(), sigmoid(gate(3, j)));
            let cn = f * c[j] + i * g;
            (o * cn.tanh(), cn)
        })
        .unzip()
}

/// The LSTM layer's training forward, its inference path and the decoder's cell step
/// all follow PyTorch's equations, at widths whose gate loop runs in 16-unit blocks,
/// in the remainder after them, or both.
#[test]
fn lstm_follows_pytorch_equations() {
    let (steps, input) = (4, 5);
    for (hidden, seed) in [(6, 520), (16, 530), (35, 540)] {
        let x = random2((steps, input), seed);
        let lstm = Lstm::new(input, hidden, false, "_l0", &mut rng(seed + 1));
        let cell = lasr_nn::LstmCell {
            weight_ih: lstm.weight_ih.clone(),
            weight_hh: lstm.weight_hh.clone(),
            bias_ih: lstm.bias_ih.clone(),
            bias_hh: lstm.bias_hh.clone(),
        };
        let (y, _) = lstm.forward(x.view().insert_axis(Axis(1)), None).unwrap();
        let y = y.index_axis_move(Axis(1), 0);
        let fast = lstm.infer(x.view()).unwrap();
        let (mut h, mut c) = (vec![0.0; hidden], vec![0.0; hidden]);
        let (mut hs, mut cs) = (Array2::zeros((1, hidden)), Array2::zeros((1, hidden)));
        for t in 0..steps {
            (h, c) = lstm_reference(&lstm, &to_f64(x.row(t)), &h, &c);
            (hs, cs) = cell
                .step(None, x.slice(s![t..t + 1, ..]), hs.view(), cs.view())
                .unwrap();
            for j in 0..hidden {
                for (got, want, what) in [
                    (y[(t, j)], h[j], "LSTM"),
                    (fast[(t, j)], h[j], "LSTM inference"),
                    (hs[(0, j)], h[j], "LSTMCell h"),
                    (cs[(0, j)], c[j], "LSTMCell c"),
                ] {
                    assert!(
                        (f64::from(got) - want).abs() < 1e-5,
                        "{what} H={hidden} step {t} unit {j}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// The generic layer over `Lstm` is `BiLstm`, bit for bit: same parameters and names
/// from the same seed, same outputs, gradients, inference and errors.
#[test]
fn bilstm_names_its_parameters_like_pytorch() {
    // `BiLstm` is `Bidirectional<Lstm>`; its numerics are covered by the padded-batch
    // test above, the gradient checks and the PyTorch golden test of the model.
    let bilstm = BiLstm::new(3, 4, 2, &mut rng(600));
    assert_eq!(names(&bilstm, "")[5], "weight_hh_l2_reverse");
    assert_eq!(bilstm.forward.weight_ih.dim(), (16, 3));
}

#[test]
fn aliases_name_their_parameters_like_pytorch() {
    let gru = BiGru::new(3, 4, 1, &mut rng(700));
    let elman = BiElman::new(3, 4, 1, &mut rng(701));
    let want = [
        "enc.weight_ih_l1",
        "enc.weight_hh_l1",
        "enc.bias_ih_l1",
        "enc.bias_hh_l1",
        "enc.weight_ih_l1_reverse",
        "enc.weight_hh_l1_reverse",
        "enc.bias_ih_l1_reverse",
        "enc.bias_hh_l1_reverse",
    ];
    assert_eq!(names(&gru, "enc"), want);
    assert_eq!(names(&elman, "enc"), want);
    // GRU tensors hold three gates, Elman's one.
    assert_eq!(gru.forward.weight_ih.dim(), (12, 3));
    assert_eq!(elman.backward.weight_hh.dim(), (4, 4));
    assert_eq!(gru.num_params(), 2 * (12 * 3 + 12 * 4 + 12 + 12));
    // Shape errors name the layer.
    let (_, cache) = gru.forward(random3((2, 1, 3), 702).view(), None).unwrap();
    let mut g = gru.zeros_like();
    let err = gru
        .backward(&cache, Array3::zeros((2, 1, 4)).view(), &mut g)
        .unwrap_err();
    assert!(err.to_string().starts_with("BiGRU"), "{err}");
}

/// An LSTM cell fed its first input columns as rows of a table (a decoder's
/// embedding columns, `LstmCell::prepare_given`) computes what it computes on the
/// whole input, and its backward, with the table's, gives the same gradients: for the
/// rest of the input, every weight, and the embedding.
#[test]
fn lstm_cell_with_given_columns_matches_the_whole_input() {
    let (vocab, e, rest, hd, batch) = (6, 3, 4, 5, 3);
    let cell = lasr_nn::LstmCell::new(e + rest, hd, &mut rng(400));
    let emb = random2((vocab, e), 401);
    let tokens = [4usize, 0, 4];
    let ctx = random2((batch, rest), 402);
    let (h0, c0) = (random2((batch, hd), 403), random2((batch, hd), 404));
    let (dh, dc) = (random2((batch, hd), 405), random2((batch, hd), 406));
    let rows = emb.select(Axis(0), &tokens);
    let whole = ndarray::concatenate(Axis(1), &[rows.view(), ctx.view()]).unwrap();

    let plain = cell.prepare();
    let (h, c, cache) = cell
        .forward(&plain, whole.view(), h0.view(), c0.view())
        .unwrap();
    let (dx, dh_prev, _, dgates) = cell
        .backward_gates(Some(&plain), &cache, dh.view(), dc.view())
        .unwrap();
    let mut grads = cell.zeros_like();
    cell.accumulate(&[(&cache, dgates.view())], &mut grads)
        .unwrap();
    let mut demb = Array2::<f32>::zeros((vocab, e));
    for (b, &t) in tokens.iter().enumerate() {
        let mut row = demb.row_mut(t);
        row += &dx.slice(s![b, ..e]);
    }

    let given = cell.prepare_given(e);
    assert_eq!(given.given(), e);
    let table = cell.given_table(emb.view()).unwrap();
    let g = table.select(Axis(0), &tokens);
    let (h2, c2, cache2) = cell
        .forward_given(
            None,
            &given,
            Some(g.view()),
            ctx.view(),
            h0.view(),
            c0.view(),
        )
        .unwrap();
    assert!(max_abs_diff(h.view(), h2.view()) < 1e-6);
    assert!(max_abs_diff(c.view(), c2.view()) < 1e-6);
    // Without the given rows, or with the whole input, the step is refused.
    assert!(cell
        .forward_given(None, &given, None, ctx.view(), h0.view(), c0.view())
        .is_err());
    assert!(cell
        .forward_given(
            None,
            &given,
            Some(g.view()),
            whole.view(),
            h0.view(),
            c0.view()
        )
        .is_err());
    let (dx2, dh_prev2, _, dgates2) = cell
        .backward_gates(Some(&given), &cache2, dh.view(), dc.view())
        .unwrap();
    assert_eq!(dx2.dim(), (batch, rest));
    assert!(max_abs_diff(dx.slice(s![.., e..]), dx2.view()) < 1e-6);
    assert!(max_abs_diff(dh_prev.view(), dh_prev2.view()) < 1e-6);
    let mut grads2 = cell.zeros_like();
    cell.accumulate(&[(&cache2, dgates2.view())], &mut grads2)
        .unwrap();
    let mut dtable = Array2::<f32>::zeros(table.raw_dim());
    for (b, &t) in tokens.iter().enumerate() {
        let mut row = dtable.row_mut(t);
        row += &dgates2.row(b);
    }
    let mut demb2 = Array2::<f32>::zeros((vocab, e));
    cell.given_table_backward(emb.view(), dtable.view(), &mut grads2, demb2.view_mut())
        .unwrap();
    assert!(max_abs_diff(demb.view(), demb2.view()) < 1e-5);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    grads.visit("", &mut |n, t| a.push((n, t.to_owned())));
    grads2.visit("", &mut |n, t| b.push((n, t.to_owned())));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.iter().any(|&v| v != 0.0), "{n} is all zero");
        assert!(max_abs_diff(x.view(), y.view()) < 1e-5, "{n} differs");
    }
}
