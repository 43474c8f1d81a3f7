//! LSTM over whole sequences, one direction, with backpropagation through time
//! (PyTorch's `nn.LSTM` layer: gates packed `i, f, g, o`, zero initial state).
//!
//! Shapes are time-major: input `[T, B, I]`, output `[T, B, H]`.
//!
//! Variable lengths: step `t` of sequence `b` is live when `t < lengths[b]`. A dead
//! step outputs zero and hands a zero state on, so the reverse direction starts every
//! sequence from zero at its own last frame, as PyTorch's packed sequences do.

use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, Axis};

use crate::activation as act;
use crate::error::{check_shape, Error, Result};
use crate::gru::{check_prepared, pack_pair, step_product, transpose_as};
use crate::linalg::{matmul, transpose};
use crate::packed::{PackedMatrix, PackedRecurrent, Recurrence, WeightFormat};
use crate::recurrent::{cell_module, order, recurrent_module};
use crate::team::TeamMember;

/// One direction of one LSTM layer. `weight_ih` `[4H, I]`, `weight_hh` `[4H, H]`,
/// `bias_ih`, `bias_hh` `[4H]`, rows in gate order input, forget, cell, output.
#[derive(Debug, Clone, PartialEq)]
pub struct Lstm {
    pub weight_ih: Array2<f32>,
    pub weight_hh: Array2<f32>,
    pub bias_ih: Array1<f32>,
    pub bias_hh: Array1<f32>,
    /// Runs from the last frame to the first.
    pub reverse: bool,
    /// Appended to parameter names, as PyTorch does: `_l0`, `_l0_reverse`.
    pub suffix: String,
}

/// What [`Lstm::backward`] needs from the forward pass.
#[derive(Debug, Clone)]
pub struct LstmCache {
    /// Input `[T, B, I]`.
    x: Array3<f32>,
    /// Gate activations after their non-linearities, `[T, B, 4H]`.
    gates: Array3<f32>,
    /// Cell state `[T, B, H]` (zero at dead steps).
    c: Array3<f32>,
    /// Output `[T, B, H]` (zero at dead steps).
    h: Array3<f32>,
    /// Live steps `[T, B]`, when lengths were given.
    live: Option<Array2<bool>>,
}

impl Lstm {
    /// Runs the layer over `x` `[T, B, I]`; returns the output `[T, B, H]` and the cache
    /// for [`Lstm::backward`]. `lengths` `[B]`, each at most `T`, marks live steps.
    pub fn forward(
        &self,
        x: ArrayView3<f32>,
        lengths: Option<&[usize]>,
    ) -> Result<(Array3<f32>, LstmCache)> {
        check_shape(
            &self.name(),
            "input",
            x.shape(),
            &[None, None, Some(self.input_dim())],
        )?;
        let (steps, batch, _) = x.dim();
        let live = live_mask(&self.name(), steps, batch, lengths)?;
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return Ok(unsafe { self.forward_avx2(x, live) });
        }
        Ok(self.forward_impl(x, live))
    }

    /// [`Lstm::forward_impl`] compiled for AVX2 and FMA (same results: LLVM does not
    /// fuse multiplies and adds unasked).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(
        &self,
        x: ArrayView3<f32>,
        live: Option<Array2<bool>>,
    ) -> (Array3<f32>, LstmCache) {
        self.forward_impl(x, live)
    }

    #[inline(always)]
    fn forward_impl(
        &self,
        x: ArrayView3<f32>,
        live: Option<Array2<bool>>,
    ) -> (Array3<f32>, LstmCache) {
        let (steps, batch, input) = x.dim();
        let hd = self.hidden();
        let x = x.as_standard_layout().into_owned();
        // `W_hh` prepared for the per-step products (`Recurrence`). The input
        // projection of all steps is one large product that packs its right-hand side
        // anyway, so it takes `W_ih^T` as a view.
        let w_hh = Recurrence::new(self.weight_hh.view(), batch);
        // Input projections of every step in one product, both biases folded in.
        let mut gates = Array3::zeros((steps, batch, 4 * hd));
        {
            let bias = &self.bias_ih + &self.bias_hh;
            let mut g2 = gates
                .view_mut()
                .into_shape_with_order((steps * batch, 4 * hd))
                .expect("contiguous");
            g2.assign(
                &bias
                    .broadcast((steps * batch, 4 * hd))
                    .expect("bias is [4H]"),
            );
            let x2 = x
                .view()
                .into_shape_with_order((steps * batch, input))
                .expect("contiguous");
            matmul(g2, x2, self.weight_ih.t(), true);
        }
        let mut c = Array3::<f32>::zeros((steps, batch, hd));
        let mut h = Array3::<f32>::zeros((steps, batch, hd));
        let mut c_prev = Array2::<f32>::zeros((batch, hd));
        for (t, prev) in order(self.reverse, steps) {
            if let Some(p) = prev {
                w_hh.acc(gates.slice_mut(s![t, .., ..]), h.slice(s![p, .., ..]));
            }
            for b in 0..batch {
                if !live.as_ref().is_none_or(|l| l[(t, b)]) {
                    // Dead step: zero output and state, already in place.
                    continue;
                }
                let mut g = gates.slice_mut(s![t, b, ..]);
                let mut cr = c.slice_mut(s![t, b, ..]);
                let mut hr = h.slice_mut(s![t, b, ..]);
                cell_forward(
                    g.as_slice_mut().expect("contiguous"),
                    c_prev.row(b).as_slice().expect("contiguous"),
                    cr.as_slice_mut().expect("contiguous"),
                    hr.as_slice_mut().expect("contiguous"),
                );
            }
            c_prev.assign(&c.slice(s![t, .., ..]));
        }
        let cache = LstmCache {
            x,
            gates,
            c,
            h: h.clone(),
            live,
        };
        (h, cache)
    }

    #[inline(always)]
    fn infer_impl(&self, x: ArrayView2<f32>, w: &PackedRecurrent) -> Array2<f32> {
        let steps = x.nrows();
        let hd = self.hidden();
        let bias = &self.bias_ih + &self.bias_hh;
        let mut gates = Array2::zeros((steps, 4 * hd));
        gates.assign(&bias.broadcast((steps, 4 * hd)).expect("bias is [4H]"));
        // All steps' input projections at once.
        w.input_projection(gates.view_mut(), x, self.weight_ih.view());
        let w_hh = &w.hh;
        let mut h = Array2::<f32>::zeros((steps, hd));
        let (mut h_prev, mut c_prev, mut c) = (vec![0f32; hd], vec![0f32; hd], vec![0f32; hd]);
        for (t, prev) in order(self.reverse, steps) {
            let mut g = gates.row_mut(t);
            let g = g.as_slice_mut().expect("contiguous");
            if prev.is_some() {
                w_hh.gemv_acc(g, &h_prev);
            }
            let mut ht = h.row_mut(t);
            let ht = ht.as_slice_mut().expect("contiguous");
            cell_forward(g, &c_prev, &mut c, ht);
            h_prev.copy_from_slice(ht);
            std::mem::swap(&mut c, &mut c_prev);
        }
        h
    }

    /// Adds this layer's parameter gradients into `grads` and returns `dL/dx`
    /// `[T, B, I]`, given `dy` = `dL/d output` `[T, B, H]`.
    pub fn backward(
        &self,
        cache: &LstmCache,
        dy: ArrayView3<f32>,
        grads: &mut Lstm,
    ) -> Result<Array3<f32>> {
        Ok(self
            .backward_to(cache, dy, grads, true)?
            .expect("the input gradient was asked for"))
    }

    /// [`Lstm::backward`], returning `dL/dx` only if `input_grad` (see
    /// [`Recurrent::backward_to`](crate::recurrent::Recurrent::backward_to)).
    pub fn backward_to(
        &self,
        cache: &LstmCache,
        dy: ArrayView3<f32>,
        grads: &mut Lstm,
        input_grad: bool,
    ) -> Result<Option<Array3<f32>>> {
        let (steps, batch, _) = cache.x.dim();
        check_shape(
            &self.name(),
            "output gradient",
            dy.shape(),
            &[Some(steps), Some(batch), Some(self.hidden())],
        )?;
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return Ok(unsafe { self.backward_avx2(cache, dy, grads, input_grad) });
        }
        Ok(self.backward_impl(cache, dy, grads, input_grad))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_avx2(
        &self,
        cache: &LstmCache,
        dy: ArrayView3<f32>,
        grads: &mut Lstm,
        input_grad: bool,
    ) -> Option<Array3<f32>> {
        self.backward_impl(cache, dy, grads, input_grad)
    }

    #[inline(always)]
    fn backward_impl(
        &self,
        cache: &LstmCache,
        dy: ArrayView3<f32>,
        grads: &mut Lstm,
        input_grad: bool,
    ) -> Option<Array3<f32>> {
        let (steps, batch, input) = cache.x.dim();
        let hd = self.hidden();
        let dy = dy.as_standard_layout();
        let zeros = vec![0f32; hd];
        let mut dgates = Array3::<f32>::zeros((steps, batch, 4 * hd));
        let mut dh_carry = Array2::<f32>::zeros((batch, hd));
        let mut dc_carry = Array2::<f32>::zeros((batch, hd));
        let order = order(self.reverse, steps);
        let w_hh_t = Recurrence::new(self.weight_hh.t(), batch);
        for &(t, prev) in order.iter().rev() {
            for b in 0..batch {
                let mut dhc = dh_carry.row_mut(b);
                let mut dcc = dc_carry.row_mut(b);
                if !cache.live.as_ref().is_none_or(|l| l[(t, b)]) {
                    // A dead step's state was forced to zero: nothing flows through it.
                    dhc.fill(0.0);
                    dcc.fill(0.0);
                    continue;
                }
                let c_prev = prev.map(|p| cache.c.slice(s![p, b, ..]));
                let mut dg = dgates.slice_mut(s![t, b, ..]);
                cell_backward(
                    cache
                        .gates
                        .slice(s![t, b, ..])
                        .as_slice()
                        .expect("contiguous"),
                    cache.c.slice(s![t, b, ..]).as_slice().expect("contiguous"),
                    c_prev
                        .as_ref()
                        .map_or(&zeros[..], |v| v.as_slice().expect("contiguous")),
                    dy.slice(s![t, b, ..]).as_slice().expect("contiguous"),
                    dhc.as_slice().expect("contiguous"),
                    dcc.as_slice_mut().expect("contiguous"),
                    dg.as_slice_mut().expect("contiguous"),
                );
            }
            if prev.is_some() {
                dh_carry.fill(0.0);
                w_hh_t.acc(dh_carry.view_mut(), dgates.slice(s![t, .., ..]));
            }
        }
        // Parameter gradients over all steps at once.
        let n = steps * batch;
        let dg2 = dgates
            .view()
            .into_shape_with_order((n, 4 * hd))
            .expect("contiguous");
        let dg2_t = dg2.t();
        let x2 = cache
            .x
            .view()
            .into_shape_with_order((n, input))
            .expect("contiguous");
        matmul(grads.weight_ih.view_mut(), dg2_t, x2, true);
        let mut h_prev = Array3::<f32>::zeros((steps, batch, hd));
        for &(t, prev) in &order {
            if let Some(p) = prev {
                h_prev
                    .slice_mut(s![t, .., ..])
                    .assign(&cache.h.slice(s![p, .., ..]));
            }
        }
        let hp2 = h_prev
            .view()
            .into_shape_with_order((n, hd))
            .expect("contiguous");
        matmul(grads.weight_hh.view_mut(), dg2_t, hp2, true);
        let db = dg2.sum_axis(Axis(0));
        grads.bias_ih += &db;
        grads.bias_hh += &db;
        if !input_grad {
            return None;
        }
        let mut dx = Array3::<f32>::zeros((steps, batch, input));
        {
            let dx2 = dx
                .view_mut()
                .into_shape_with_order((n, input))
                .expect("contiguous");
            matmul(dx2, dg2, self.weight_ih.view(), false);
        }
        Some(dx)
    }
}

/// One step of a batch of cells: pre-activations `gates` `[B, 4H]` become activations
/// in place; returns the new `h` and `c` `[B, H]` from `c_prev` `[B, H]`.
fn activate(gates: &mut Array2<f32>, c_prev: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx512() {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA.
        return unsafe { activate_avx512(gates, c_prev) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { activate_avx2(gates, c_prev) };
    }
    activate_impl(gates, c_prev)
}

/// [`activate_impl`] with the gate loop vectorised 16 lanes wide (the same operations
/// as every other build, so the same results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn activate_avx512(
    gates: &mut Array2<f32>,
    c_prev: ArrayView2<f32>,
) -> (Array2<f32>, Array2<f32>) {
    activate_impl(gates, c_prev)
}

/// [`activate_impl`] vectorised for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activate_avx2(
    gates: &mut Array2<f32>,
    c_prev: ArrayView2<f32>,
) -> (Array2<f32>, Array2<f32>) {
    activate_impl(gates, c_prev)
}

#[inline(always)]
fn activate_impl(gates: &mut Array2<f32>, c_prev: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
    let (batch, hd) = c_prev.dim();
    let c_prev = c_prev.as_standard_layout();
    let mut c = Array2::zeros((batch, hd));
    let mut h = Array2::zeros((batch, hd));
    for b in 0..batch {
        let mut g = gates.row_mut(b);
        let mut cr = c.row_mut(b);
        let mut hr = h.row_mut(b);
        cell_forward(
            g.as_slice_mut().expect("contiguous"),
            c_prev.row(b).as_slice().expect("contiguous"),
            cr.as_slice_mut().expect("contiguous"),
            hr.as_slice_mut().expect("contiguous"),
        );
    }
    (h, c)
}

/// One live step of one sequence: pre-activations `g` `[4H]` become activations in
/// place; writes the new cell state `c` and output `h` `[H]`.
#[inline(always)]
fn cell_forward(g: &mut [f32], c_prev: &[f32], c: &mut [f32], h: &mut [f32]) {
    let hd = c.len();
    let (gi, rest) = g.split_at_mut(hd);
    let (gf, rest) = rest.split_at_mut(hd);
    let (gg, go) = rest.split_at_mut(hd);
    let (go, c_prev, h) = (&mut go[..hd], &c_prev[..hd], &mut h[..hd]);
    // Fixed-width blocks: with the plain index loop LLVM kept a vector body behind
    // run-time overlap checks of the seven slices and ran the scalar one (the speller's
    // and the LSTM LM's steps spent 14% of decoding there). A block of known length
    // is vectorised as a whole, with nothing to check.
    const W: usize = 16;
    let whole = hd - hd % W;
    let blocks = gi[..whole]
        .chunks_exact_mut(W)
        .zip(gf[..whole].chunks_exact_mut(W))
        .zip(gg[..whole].chunks_exact_mut(W))
        .zip(go[..whole].chunks_exact_mut(W))
        .zip(c_prev[..whole].chunks_exact(W))
        .zip(c[..whole].chunks_exact_mut(W))
        .zip(h[..whole].chunks_exact_mut(W));
    for ((((((gi, gf), gg), go), cp), c), h) in blocks {
        let gi: &mut [f32; W] = gi.try_into().expect("block of W");
        let gf: &mut [f32; W] = gf.try_into().expect("block of W");
        let gg: &mut [f32; W] = gg.try_into().expect("block of W");
        let go: &mut [f32; W] = go.try_into().expect("block of W");
        let cp: &[f32; W] = cp.try_into().expect("block of W");
        let c: &mut [f32; W] = c.try_into().expect("block of W");
        let h: &mut [f32; W] = h.try_into().expect("block of W");
        for j in 0..W {
            cell_unit(
                &mut gi[j], &mut gf[j], &mut gg[j], &mut go[j], cp[j], &mut c[j], &mut h[j],
            );
        }
    }
    for j in whole..hd {
        cell_unit(
            &mut gi[j], &mut gf[j], &mut gg[j], &mut go[j], c_prev[j], &mut c[j], &mut h[j],
        );
    }
}

/// One hidden unit of [`cell_forward`].
#[inline(always)]
fn cell_unit(
    gi: &mut f32,
    gf: &mut f32,
    gg: &mut f32,
    go: &mut f32,
    c_prev: f32,
    c: &mut f32,
    h: &mut f32,
) {
    let i = act::sigmoid(*gi);
    let f = act::sigmoid(*gf);
    let gc = act::tanh(*gg);
    let o = act::sigmoid(*go);
    *gi = i;
    *gf = f;
    *gg = gc;
    *go = o;
    let cn = f * c_prev + i * gc;
    *c = cn;
    *h = o * act::tanh(cn);
}

/// Gradients of one live step: from the activations `g` `[4H]`, cell states `c` and
/// `c_prev`, and `dh = dy + dh_carry`, writes the pre-activation gradients `dg` `[4H]`
/// and replaces `dc_carry` with the gradient for the previous cell state.
#[inline(always)]
fn cell_backward(
    g: &[f32],
    c: &[f32],
    c_prev: &[f32],
    dy: &[f32],
    dh_carry: &[f32],
    dc_carry: &mut [f32],
    dg: &mut [f32],
) {
    let hd = c.len();
    let (gi, rest) = g.split_at(hd);
    let (gf, rest) = rest.split_at(hd);
    let (gg, go) = rest.split_at(hd);
    let (dgi, rest) = dg.split_at_mut(hd);
    let (dgf, rest) = rest.split_at_mut(hd);
    let (dgg, dgo) = rest.split_at_mut(hd);
    let (go, dgo, c_prev, dy, dh_carry, dc_carry) = (
        &go[..hd],
        &mut dgo[..hd],
        &c_prev[..hd],
        &dy[..hd],
        &dh_carry[..hd],
        &mut dc_carry[..hd],
    );
    for j in 0..hd {
        let (i, f, gc, o) = (gi[j], gf[j], gg[j], go[j]);
        let tc = act::tanh(c[j]);
        let dh = dy[j] + dh_carry[j];
        let d_o = dh * tc;
        let dc = dc_carry[j] + dh * o * (1.0 - tc * tc);
        dgi[j] = dc * gc * i * (1.0 - i);
        dgf[j] = dc * c_prev[j] * f * (1.0 - f);
        dgg[j] = dc * i * (1.0 - gc * gc);
        dgo[j] = d_o * o * (1.0 - o);
        dc_carry[j] = dc * f;
    }
}

/// `[T, B]` liveness from lengths, or `None` when every step is live.
pub(crate) fn live_mask(
    layer: &str,
    steps: usize,
    batch: usize,
    lengths: Option<&[usize]>,
) -> Result<Option<Array2<bool>>> {
    let Some(lengths) = lengths else {
        return Ok(None);
    };
    if lengths.len() != batch {
        return Err(Error::Lengths {
            layer: layer.to_string(),
            reason: format!("{} lengths for a batch of {batch}", lengths.len()),
        });
    }
    if let Some(&l) = lengths.iter().find(|&&l| l > steps) {
        return Err(Error::Lengths {
            layer: layer.to_string(),
            reason: format!("length {l} is longer than the {steps} steps given"),
        });
    }
    Ok(Some(Array2::from_shape_fn((steps, batch), |(t, b)| {
        t < lengths[b]
    })))
}

recurrent_module!(Lstm, "LSTM", 4);

/// A bidirectional LSTM layer (PyTorch's `bidirectional=True`): `[T, B, I]` ->
/// `[T, B, 2H]`, forward direction first.
pub type BiLstm = crate::recurrent::Bidirectional<Lstm>;

/// What [`BiLstm::backward`] needs.
pub type BiLstmCache = crate::recurrent::BidirectionalCache<Lstm>;

/// One LSTM step at a time, for decoders whose next input depends on their last
/// output (PyTorch's `nn.LSTMCell`: `weight_ih` `[4H, I]`, `weight_hh` `[4H, H]`,
/// `bias_ih`, `bias_hh` `[4H]`, gates `i, f, g, o`).
#[derive(Debug, Clone, PartialEq)]
pub struct LstmCell {
    pub weight_ih: Array2<f32>,
    pub weight_hh: Array2<f32>,
    pub bias_ih: Array1<f32>,
    pub bias_hh: Array1<f32>,
}

/// An [`LstmCell`] with its weights transposed for fast steps. Build it once per batch
/// (weights must not change while it is in use).
#[derive(Debug, Clone)]
pub struct PreparedLstmCell {
    w_ih_t: Array2<f32>,
    w_hh_t: Array2<f32>,
    bias: Array1<f32>,
    /// `weight_ih` and `weight_hh` packed for single-row steps (and, in int8, for
    /// several rows too), if asked for.
    packed: Option<[PackedMatrix; 2]>,
    /// For training steps on AVX-512 CPUs: `weight_ih` (its columns from `given` on),
    /// `weight_hh` and their transposes packed in f32 (the forward and backward
    /// products), see [`LstmCell::prepare`].
    train: Option<Box<TrainPacks>>,
    /// Leading input columns whose gate contribution the caller supplies
    /// ([`LstmCell::prepare_given`]); `w_ih_t` and the packs hold the other columns.
    given: usize,
}

impl PreparedLstmCell {
    /// The leading input columns these weights leave to the caller
    /// ([`LstmCell::prepare_given`]); 0 from the other `prepare`s.
    pub fn given(&self) -> usize {
        self.given
    }
}

/// A cell's weights packed in f32 for [`LstmCell::forward`] (`W_ih`, `W_hh`) and
/// [`LstmCell::backward_gates`] (`W_ih^T`, `W_hh^T`).
#[derive(Debug, Clone)]
struct TrainPacks {
    forward: [PackedMatrix; 2],
    backward: [PackedMatrix; 2],
}

/// What [`LstmCell::backward`] needs from one step.
#[derive(Debug, Clone)]
pub struct LstmCellCache {
    x: Array2<f32>,
    h_prev: Array2<f32>,
    c_prev: Array2<f32>,
    gates: Array2<f32>,
    c: Array2<f32>,
}

cell_module!(LstmCell, 4);

impl LstmCell {
    /// Transposed weights and summed bias for [`LstmCell::forward`] and batched
    /// [`LstmCell::step`]s; on AVX-512 CPUs also the weights and their transposes
    /// packed for training's per-step products.
    ///
    /// Those products have a few rows per step (a training batch's share of one core)
    /// and weights too large for L2 (19 MB at the reference speller's size), so they
    /// run at the speed the weights stream from L3. The packed walk with software
    /// prefetch streams faster than gemm on a transposed copy: 15-25% for one core
    /// alone, 2-3% of the whole reference training step, where both cores stream at
    /// once (BENCHMARKS.md). It also gives each row the bits it would get alone.
    pub fn prepare(&self) -> PreparedLstmCell {
        self.prepare_given(0)
    }

    /// [`LstmCell::prepare`] for training steps whose first `given` input columns
    /// reach the gates as a sum the caller supplies ([`LstmCell::forward_given`]): a
    /// decoder's embedding columns, whose product with a token's embedding is a row of
    /// a table made once per batch (`embedding W_ih[:, ..given]^T`). Only the other
    /// columns are transposed and packed, so every step's products stream `given`
    /// fewer columns of `weight_ih`, forward and backward.
    ///
    /// # Panics
    /// When `given` exceeds the input width (a bug in the caller, not bad input).
    pub fn prepare_given(&self, given: usize) -> PreparedLstmCell {
        assert!(
            given <= self.input_dim(),
            "{given} given columns of {}",
            self.input_dim()
        );
        let w_ih = self.weight_ih.slice(s![.., given..]);
        let train = crate::packed::avx512_rows().then(|| {
            Box::new(TrainPacks {
                forward: [
                    PackedMatrix::new(w_ih, WeightFormat::F32),
                    PackedMatrix::new(self.weight_hh.view(), WeightFormat::F32),
                ],
                backward: [
                    PackedMatrix::new(w_ih.t(), WeightFormat::F32),
                    PackedMatrix::new(self.weight_hh.t(), WeightFormat::F32),
                ],
            })
        });
        PreparedLstmCell {
            w_ih_t: transpose(w_ih),
            w_hh_t: transpose(self.weight_hh.view()),
            bias: &self.bias_ih + &self.bias_hh,
            packed: None,
            train,
            given,
        }
    }

    /// The table of gate contributions [`LstmCell::forward_given`] takes rows of: for
    /// vectors `emb` `[V, G]` (an embedding's rows), `emb W_ih[:, ..G]^T` `[V, 4H]`.
    pub fn given_table(&self, emb: ArrayView2<f32>) -> Result<Array2<f32>> {
        let g = emb.ncols();
        self.check_columns("given columns", g)?;
        let mut table = Array2::zeros((emb.nrows(), 4 * self.hidden()));
        matmul(
            table.view_mut(),
            emb,
            self.weight_ih.slice(s![.., ..g]).t(),
            false,
        );
        Ok(table)
    }

    /// The backward of [`LstmCell::given_table`]: for the table's gradient `dtable`
    /// `[V, 4H]`, adds `dtable^T emb` into `grads.weight_ih[:, ..G]` and `dtable
    /// W_ih[:, ..G]` into `demb` `[V, G]`.
    pub fn given_table_backward(
        &self,
        emb: ArrayView2<f32>,
        dtable: ArrayView2<f32>,
        grads: &mut LstmCell,
        demb: ndarray::ArrayViewMut2<f32>,
    ) -> Result<()> {
        let (v, g) = emb.dim();
        check_shape(
            "LSTMCell",
            "given table gradient",
            dtable.shape(),
            &[Some(v), Some(4 * self.hidden())],
        )?;
        check_shape(
            "LSTMCell",
            "given gradient",
            demb.shape(),
            &[Some(v), Some(g)],
        )?;
        self.check_columns("given columns", g)?;
        matmul(
            grads.weight_ih.slice_mut(s![.., ..g]),
            dtable.t(),
            emb,
            true,
        );
        matmul(demb, dtable, self.weight_ih.slice(s![.., ..g]), true);
        Ok(())
    }

    /// [`LstmCell::prepare`] for decoding, with both weights also packed in `format` for
    /// single-row [`LstmCell::step`]s; in bf16 the transposes hold the same rounded
    /// values, so every step of a search computes with one set of weights.
    pub fn prepare_packed(&self, format: WeightFormat) -> PreparedLstmCell {
        PreparedLstmCell {
            w_ih_t: transpose_as(&self.weight_ih, format),
            w_hh_t: transpose_as(&self.weight_hh, format),
            bias: &self.bias_ih + &self.bias_hh,
            packed: Some(pack_pair(&self.weight_ih, &self.weight_hh, format)),
            train: None,
            given: 0,
        }
    }

    /// Refuses weights prepared for given columns ([`LstmCell::prepare_given`]) where
    /// the whole input comes as `x`.
    fn check_whole(&self, p: &PreparedLstmCell) -> Result<()> {
        if p.given != 0 {
            return Err(Error::Shape {
                layer: "LSTMCell".into(),
                tensor: "prepared weights' given columns",
                got: vec![p.given],
                expected: "0 (these weights are for forward_given)".into(),
            });
        }
        Ok(())
    }

    /// Refuses `columns` of the input (given ones, or a cached step's `x`) that are
    /// more than the input has.
    fn check_columns(&self, tensor: &'static str, columns: usize) -> Result<()> {
        if columns > self.input_dim() {
            return Err(Error::Shape {
                layer: "LSTMCell".into(),
                tensor,
                got: vec![columns],
                expected: format!("at most {} columns", self.input_dim()),
            });
        }
        Ok(())
    }

    /// Refuses weights prepared from a cell of another shape.
    fn check_prepared(&self, p: &PreparedLstmCell) -> Result<()> {
        check_prepared(
            "LSTMCell",
            [&self.weight_ih, &self.weight_hh],
            [&p.w_ih_t, &p.w_hh_t],
            p.given,
            p.bias.len(),
            p.packed.as_ref(),
        )
    }

    /// Checks one step's shapes: `x` `[B, I - given]`, `h_prev` and `c_prev` `[B, H]`;
    /// returns `B`.
    fn check_step(
        &self,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
        c_prev: ArrayView2<f32>,
        given: usize,
    ) -> Result<usize> {
        let hd = self.hidden();
        check_shape(
            "LSTMCell",
            "input",
            x.shape(),
            &[None, Some(self.input_dim().saturating_sub(given))],
        )?;
        let batch = x.nrows();
        check_shape(
            "LSTMCell",
            "h_prev",
            h_prev.shape(),
            &[Some(batch), Some(hd)],
        )?;
        check_shape(
            "LSTMCell",
            "c_prev",
            c_prev.shape(),
            &[Some(batch), Some(hd)],
        )?;
        Ok(batch)
    }

    /// One inference step, no cache: `x` `[B, I]`, `h_prev`, `c_prev` `[B, H]` -> new
    /// `h`, `c` `[B, H]`. A single row (greedy decoding) takes matrix-vector products on
    /// `prepared`'s packed weights if it has them ([`LstmCell::prepare_packed`]), else
    /// on the weights as stored; more rows run gemm on `prepared`'s transposed weights
    /// (in int8, the packed products over all rows), or on transposed views without it
    /// (correct, but gemm then repacks the weights on every call).
    pub fn step(
        &self,
        prepared: Option<&PreparedLstmCell>,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
        c_prev: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        let hd = self.hidden();
        let batch = self.check_step(x, h_prev, c_prev, 0)?;
        if let Some(p) = prepared {
            self.check_prepared(p)?;
            self.check_whole(p)?;
        }
        let mut gates = Array2::zeros((batch, 4 * hd));
        let bias = match prepared {
            Some(p) => std::borrow::Cow::Borrowed(&p.bias),
            None => std::borrow::Cow::Owned(&self.bias_ih + &self.bias_hh),
        };
        gates.assign(&bias.broadcast((batch, 4 * hd)).expect("bias is [4H]"));
        let packed = prepared.and_then(|p| p.packed.as_ref());
        step_product(
            gates.view_mut(),
            x,
            &self.weight_ih,
            prepared.map(|p| &p.w_ih_t),
            packed.map(|[w, _]| w),
            true,
        );
        step_product(
            gates.view_mut(),
            h_prev,
            &self.weight_hh,
            prepared.map(|p| &p.w_hh_t),
            packed.map(|[_, w]| w),
            true,
        );
        Ok(activate(&mut gates, c_prev))
    }

    /// One step: `x` `[B, I]`, state `h_prev`, `c_prev` `[B, H]` -> new `h`, `c`
    /// `[B, H]` and the cache. `prepared` must come from this cell's current weights.
    pub fn forward(
        &self,
        prepared: &PreparedLstmCell,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
        c_prev: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, Array2<f32>, LstmCellCache)> {
        self.forward_in(None, prepared, x, h_prev, c_prev)
    }

    /// [`LstmCell::forward`] as a member of `team`, if given, whose members share the
    /// weights' stream of the step's products (when `prepared` has the training
    /// packs): the same bits as alone. Every member must make the same sequence of
    /// team products (cells of the same shapes and weights, step for step), or leave
    /// the team.
    pub fn forward_in(
        &self,
        team: Option<&TeamMember>,
        prepared: &PreparedLstmCell,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
        c_prev: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, Array2<f32>, LstmCellCache)> {
        self.check_whole(prepared)?;
        self.forward_given(team, prepared, None, x, h_prev, c_prev)
    }

    /// [`LstmCell::forward_in`] with weights from [`LstmCell::prepare_given`]: the
    /// first `given` input columns' contribution to the gates comes as `given_gates`
    /// `[B, 4H]` (rows of [`LstmCell::given_table`]), `x` `[B, I - given]` holds the
    /// rest. Backward then returns the gradient of `x` alone and leaves the given
    /// columns' weight gradient to [`LstmCell::given_table_backward`].
    pub fn forward_given(
        &self,
        team: Option<&TeamMember>,
        prepared: &PreparedLstmCell,
        given_gates: Option<ArrayView2<f32>>,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
        c_prev: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, Array2<f32>, LstmCellCache)> {
        let hd = self.hidden();
        let batch = self.check_step(x, h_prev, c_prev, prepared.given)?;
        self.check_prepared(prepared)?;
        let mut gates = Array2::zeros((batch, 4 * hd));
        gates.assign(
            &prepared
                .bias
                .broadcast((batch, 4 * hd))
                .expect("bias is [4H]"),
        );
        match given_gates {
            Some(g) => {
                check_shape(
                    "LSTMCell",
                    "given gates",
                    g.shape(),
                    &[Some(batch), Some(4 * hd)],
                )?;
                gates += &g;
            }
            None if prepared.given > 0 => {
                return Err(Error::Shape {
                    layer: "LSTMCell".into(),
                    tensor: "given gates",
                    got: vec![],
                    expected: format!("[{batch}, {}] for {} given columns", 4 * hd, prepared.given),
                })
            }
            None => {}
        }
        match (&prepared.train, team) {
            (Some(t), Some(team)) => {
                team.gemm_acc(
                    gates.view_mut(),
                    &[(&t.forward[0], x), (&t.forward[1], h_prev)],
                );
            }
            (Some(t), None) => {
                t.forward[0].gemm_acc(gates.view_mut(), x);
                t.forward[1].gemm_acc(gates.view_mut(), h_prev);
            }
            (None, _) => {
                matmul(gates.view_mut(), x, prepared.w_ih_t.view(), true);
                matmul(gates.view_mut(), h_prev, prepared.w_hh_t.view(), true);
            }
        }
        let c_prev = c_prev.as_standard_layout().into_owned();
        let (h, c) = activate(&mut gates, c_prev.view());
        let cache = LstmCellCache {
            x: x.to_owned(),
            h_prev: h_prev.to_owned(),
            c_prev,
            gates,
            c: c.clone(),
        };
        Ok((h, c, cache))
    }

    /// Gradients of one step: given `dh`, `dc` `[B, H]` (the gradient reaching the new
    /// state from everything after it), adds parameter gradients into `grads` and
    /// returns `(dx [B, I], dh_prev [B, H], dc_prev [B, H])`; after
    /// [`LstmCell::forward_given`], `dx` is the gradient of its `x`, `[B, I - given]`,
    /// and the given columns' weight gradient is left to
    /// [`LstmCell::given_table_backward`].
    pub fn backward(
        &self,
        cache: &LstmCellCache,
        dh: ArrayView2<f32>,
        dc: ArrayView2<f32>,
        grads: &mut LstmCell,
    ) -> Result<(Array2<f32>, Array2<f32>, Array2<f32>)> {
        let (dx, dh_prev, dc_prev, dgates) = self.backward_gates(None, cache, dh, dc)?;
        self.accumulate(&[(cache, dgates.view())], grads)?;
        Ok((dx, dh_prev, dc_prev))
    }

    /// [`LstmCell::backward`] without the parameter gradients: returns `dx`, `dh_prev`,
    /// `dc_prev` and the step's gate gradients `dgates` `[B, 4H]`, which
    /// [`LstmCell::accumulate`] turns into parameter gradients, for many steps at once.
    ///
    /// A decoder's backward pass goes through its steps one by one, but the weight
    /// gradients do not have to: added per step, each step reads and writes the whole
    /// gradient (19 MB at the reference speller's size) for a rank-`B` update; stacked,
    /// one product over all steps does it once.
    ///
    /// `prepared` (from this cell's current weights, for the same given columns as the
    /// step), if given, supplies the packed transposes that `dx` and `dh_prev` stream
    /// faster on AVX-512 CPUs.
    #[allow(clippy::type_complexity)]
    pub fn backward_gates(
        &self,
        prepared: Option<&PreparedLstmCell>,
        cache: &LstmCellCache,
        dh: ArrayView2<f32>,
        dc: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, Array2<f32>, Array2<f32>, Array2<f32>)> {
        self.backward_gates_in(None, prepared, cache, dh, dc)
    }

    /// [`LstmCell::backward_gates`] as a member of `team`, if given (see
    /// [`LstmCell::forward_in`]).
    #[allow(clippy::type_complexity)]
    pub fn backward_gates_in(
        &self,
        team: Option<&TeamMember>,
        prepared: Option<&PreparedLstmCell>,
        cache: &LstmCellCache,
        dh: ArrayView2<f32>,
        dc: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, Array2<f32>, Array2<f32>, Array2<f32>)> {
        let hd = self.hidden();
        let batch = cache.x.nrows();
        check_shape("LSTMCell", "dh", dh.shape(), &[Some(batch), Some(hd)])?;
        check_shape("LSTMCell", "dc", dc.shape(), &[Some(batch), Some(hd)])?;
        let dh = dh.as_standard_layout();
        let mut dc_prev = dc.as_standard_layout().into_owned();
        let zeros = vec![0f32; hd];
        let mut dgates = Array2::<f32>::zeros((batch, 4 * hd));
        for b in 0..batch {
            let mut dcc = dc_prev.row_mut(b);
            let mut dg = dgates.row_mut(b);
            cell_backward(
                cache.gates.row(b).as_slice().expect("contiguous"),
                cache.c.row(b).as_slice().expect("contiguous"),
                cache.c_prev.row(b).as_slice().expect("contiguous"),
                dh.row(b).as_slice().expect("contiguous"),
                &zeros,
                dcc.as_slice_mut().expect("contiguous"),
                dg.as_slice_mut().expect("contiguous"),
            );
        }
        self.check_columns("cached input", cache.x.ncols())?;
        // The input columns the step's `x` held (all but the given ones).
        let given = self.input_dim() - cache.x.ncols();
        if let Some(p) = prepared {
            self.check_prepared(p)?;
            if p.given != given {
                return Err(Error::Shape {
                    layer: "LSTMCell".into(),
                    tensor: "prepared weights' given columns",
                    got: vec![p.given],
                    expected: format!("{given}, as in the step's input"),
                });
            }
        }
        let mut dx = Array2::zeros((batch, cache.x.ncols()));
        let mut dh_prev = Array2::zeros((batch, hd));
        match (prepared.and_then(|p| p.train.as_ref()), team) {
            (Some(t), Some(team)) => team.gemm_acc_each(
                &mut [
                    (&t.backward[0], dx.view_mut()),
                    (&t.backward[1], dh_prev.view_mut()),
                ],
                dgates.view(),
            ),
            (Some(t), None) => {
                t.backward[0].gemm_acc(dx.view_mut(), dgates.view());
                t.backward[1].gemm_acc(dh_prev.view_mut(), dgates.view());
            }
            (None, _) => {
                matmul(
                    dx.view_mut(),
                    dgates.view(),
                    self.weight_ih.slice(s![.., given..]),
                    false,
                );
                matmul(
                    dh_prev.view_mut(),
                    dgates.view(),
                    self.weight_hh.view(),
                    false,
                );
            }
        }
        Ok((dx, dh_prev, dc_prev, dgates))
    }

    /// Adds into `grads` the parameter gradients of `steps`, each a step's cache and
    /// its `dgates` `[B, 4H]` from [`LstmCell::backward_gates`]: the steps' rows are
    /// stacked, so each weight gradient takes one product over all of them.
    pub fn accumulate(
        &self,
        steps: &[(&LstmCellCache, ArrayView2<f32>)],
        grads: &mut LstmCell,
    ) -> Result<()> {
        let hd = self.hidden();
        let width = steps.first().map_or(self.input_dim(), |(c, _)| c.x.ncols());
        self.check_columns("cached input", width)?;
        for (cache, dg) in steps {
            check_shape(
                "LSTMCell",
                "dgates",
                dg.shape(),
                &[Some(cache.x.nrows()), Some(4 * hd)],
            )?;
            check_shape(
                "LSTMCell",
                "cached input",
                cache.x.shape(),
                &[None, Some(width)],
            )?;
        }
        let (dgates, x, h_prev) = match steps {
            [(cache, dg)] => (dg.view(), cache.x.view(), cache.h_prev.view()),
            _ => {
                let rows: usize = steps.iter().map(|(c, _)| c.x.nrows()).sum();
                let mut stacked = (
                    Array2::zeros((rows, 4 * hd)),
                    Array2::zeros((rows, width)),
                    Array2::zeros((rows, hd)),
                );
                let mut r = 0;
                for (c, dg) in steps {
                    let b = c.x.nrows();
                    stacked.0.slice_mut(s![r..r + b, ..]).assign(dg);
                    stacked.1.slice_mut(s![r..r + b, ..]).assign(&c.x);
                    stacked.2.slice_mut(s![r..r + b, ..]).assign(&c.h_prev);
                    r += b;
                }
                self.add_grads(stacked.0.view(), stacked.1.view(), stacked.2.view(), grads);
                return Ok(());
            }
        };
        self.add_grads(dgates, x, h_prev, grads);
        Ok(())
    }

    /// `grads += dgates^T [x | h_prev]` and the bias sums, for stacked rows; `x` holds
    /// the last columns of the input (all but any given ones).
    fn add_grads(
        &self,
        dgates: ArrayView2<f32>,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
        grads: &mut LstmCell,
    ) {
        let given = self.input_dim() - x.ncols();
        matmul(
            grads.weight_ih.slice_mut(s![.., given..]),
            dgates.t(),
            x,
            true,
        );
        matmul(grads.weight_hh.view_mut(), dgates.t(), h_prev, true);
        let db = dgates.sum_axis(Axis(0));
        grads.bias_ih += &db;
        grads.bias_hh += &db;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The packed training products are what the speller's steps run on AVX-512
    /// CPUs (CI's among them); a `prepare` that silently stopped packing would leave
    /// the packed-path tests comparing gemm with itself.
    #[test]
    fn prepare_packs_for_training_exactly_on_avx512() {
        let cell = LstmCell::new(6, 4, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let prepared = cell.prepare();
        // Asked of the CPU directly, not through the function `prepare` consults.
        #[cfg(target_arch = "x86_64")]
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let avx512 = false;
        assert_eq!(prepared.train.is_some(), avx512);
        if let Some(t) = &prepared.train {
            assert_eq!(t.forward[0].dim(), (16, 6));
            assert_eq!(t.forward[1].dim(), (16, 4));
            assert_eq!(t.backward[0].dim(), (6, 16));
            assert_eq!(t.backward[1].dim(), (4, 16));
        }
        assert!(cell.prepare_packed(WeightFormat::F32).train.is_none());
    }

    /// The gate loop's 16-unit blocks (in the build `activate` picks for this CPU, the
    /// AVX-512 one on CI's) give the bits of the plain per-unit formula (computed here
    /// in the baseline build), at widths of blocks, remainder and both.
    #[test]
    fn gate_blocks_equal_the_per_unit_formula_to_the_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for hd in [5, 16, 35] {
            let gates = crate::init::uniform((3, 4 * hd), 4.0, &mut rng);
            let c_prev = crate::init::uniform((3, hd), 2.0, &mut rng);
            let mut fast = gates.clone();
            let (h, c) = activate(&mut fast, c_prev.view());
            for b in 0..3 {
                for j in 0..hd {
                    let g = |k: usize| gates[(b, k * hd + j)];
                    let (i, f) = (act::sigmoid(g(0)), act::sigmoid(g(1)));
                    let (gc, o) = (act::tanh(g(2)), act::sigmoid(g(3)));
                    let cn = f * c_prev[(b, j)] + i * gc;
                    let want = [i, f, gc, o, cn, o * act::tanh(cn)];
                    let got = [
                        fast[(b, j)],
                        fast[(b, hd + j)],
                        fast[(b, 2 * hd + j)],
                        fast[(b, 3 * hd + j)],
                        c[(b, j)],
                        h[(b, j)],
                    ];
                    assert_eq!(
                        got.map(f32::to_bits),
                        want.map(f32::to_bits),
                        "H={hd} b={b} j={j}"
                    );
                }
            }
        }
    }
}
