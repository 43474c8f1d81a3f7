//! GRU and Elman (tanh) recurrent layers (PyTorch's `nn.GRU` and `nn.RNN`: GRU gates
//! packed `r, z, n`, zero initial state): one direction over whole sequences ([`Gru`],
//! [`Elman`]), both directions ([`BiGru`], [`BiElman`]), and step-wise cells for
//! decoders ([`GruCell`], [`ElmanCell`], PyTorch's `nn.GRUCell` and `nn.RNNCell`).
//!
//! Shapes, variable lengths and naming follow [`crate::Lstm`]: input `[T, B, I]`,
//! output `[T, B, H]`, dead steps output zero and pass on a zero state.
//!
//! The GRU is PyTorch's reset-after form, `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`:
//! the reset gate multiplies the whole hidden projection of the `n` gate, bias included,
//! so that projection is kept apart from the input one everywhere.

use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis};

use crate::activation as act;
use crate::error::{check_shape, Result};
use crate::linalg::{gemv_acc, matmul, transpose};
use crate::lstm::live_mask;
use crate::packed::{check_packed, PackedMatrix, PackedRecurrent, WeightFormat};
use crate::recurrent::{cell_module, order, recurrent_module, Bidirectional, BidirectionalCache};

/// `h_prev[t]`: the state each step started from (zero for the first).
fn shifted(h: &Array3<f32>, order: &[(usize, Option<usize>)]) -> Array3<f32> {
    let mut out = Array3::zeros(h.raw_dim());
    for &(t, prev) in order {
        if let Some(p) = prev {
            out.slice_mut(s![t, .., ..]).assign(&h.slice(s![p, .., ..]));
        }
    }
    out
}

/// `x W^T + b` for every step at once: `[T, B, I]` -> `[T, B, rows(W)]`.
fn project(x: &Array3<f32>, w: &Array2<f32>, b: &Array1<f32>) -> Array3<f32> {
    let (steps, batch, input) = x.dim();
    let n = w.nrows();
    let mut out = Array3::zeros((steps, batch, n));
    {
        let mut o2 = out
            .view_mut()
            .into_shape_with_order((steps * batch, n))
            .expect("contiguous");
        o2.assign(&b.broadcast((steps * batch, n)).expect("bias is [rows]"));
        let x2 = x
            .view()
            .into_shape_with_order((steps * batch, input))
            .expect("contiguous");
        // One large product: gemm packs its right-hand side anyway, so the transposed
        // view costs nothing (a transposed copy did, 1 ms per 4 MB matrix).
        matmul(o2, x2, w.t(), true);
    }
    out
}

/// Parameter and (if `input_grad`) input gradients shared by both layers: `dxg`, `dhg`
/// `[T, B, G]` are the gradients of the input and hidden projections (biases
/// included).
#[allow(clippy::too_many_arguments)]
fn projection_grads(
    x: &Array3<f32>,
    h_prev: &Array3<f32>,
    dxg: &Array3<f32>,
    dhg: &Array3<f32>,
    w_ih: &Array2<f32>,
    g_w_ih: &mut Array2<f32>,
    g_w_hh: &mut Array2<f32>,
    g_b_ih: &mut Array1<f32>,
    g_b_hh: &mut Array1<f32>,
    input_grad: bool,
) -> Option<Array3<f32>> {
    let (steps, batch, input) = x.dim();
    let (n, g, hd) = (steps * batch, dxg.dim().2, h_prev.dim().2);
    let dx2 = dxg
        .view()
        .into_shape_with_order((n, g))
        .expect("contiguous");
    let dh2 = dhg
        .view()
        .into_shape_with_order((n, g))
        .expect("contiguous");
    matmul(
        g_w_ih.view_mut(),
        dx2.t(),
        x.view()
            .into_shape_with_order((n, input))
            .expect("contiguous"),
        true,
    );
    matmul(
        g_w_hh.view_mut(),
        dh2.t(),
        h_prev
            .view()
            .into_shape_with_order((n, hd))
            .expect("contiguous"),
        true,
    );
    *g_b_ih += &dx2.sum_axis(Axis(0));
    *g_b_hh += &dh2.sum_axis(Axis(0));
    if !input_grad {
        return None;
    }
    let mut dx = Array3::zeros((steps, batch, input));
    matmul(
        dx.view_mut()
            .into_shape_with_order((n, input))
            .expect("contiguous"),
        dx2,
        w_ih.view(),
        false,
    );
    Some(dx)
}

/// One live GRU step: `g` `[3H]` holds the input projection `W_i x + b_i` and becomes
/// the `r, z, n` activations in place; `hg` `[3H]` is the hidden projection
/// `W_h h_prev + b_h`; writes the new state `h` `[H]`.
#[inline(always)]
fn gru_step(g: &mut [f32], hg: &[f32], h_prev: &[f32], h: &mut [f32]) {
    let hd = h.len();
    let (gr, rest) = g.split_at_mut(hd);
    let (gz, gn) = rest.split_at_mut(hd);
    // Equal lengths up front, so the loop below runs without bounds checks.
    let (gz, gn) = (&mut gz[..hd], &mut gn[..hd]);
    let (hr, hz, hn, h_prev) = (
        &hg[..hd],
        &hg[hd..2 * hd],
        &hg[2 * hd..3 * hd],
        &h_prev[..hd],
    );
    // Fixed-width blocks, as the LSTM's `cell_forward`: the index loop's vector body
    // sat behind run-time overlap checks and the scalar one ran.
    const W: usize = 16;
    let whole = hd - hd % W;
    let blocks = gr[..whole]
        .chunks_exact_mut(W)
        .zip(gz[..whole].chunks_exact_mut(W))
        .zip(gn[..whole].chunks_exact_mut(W))
        .zip(hr[..whole].chunks_exact(W))
        .zip(hz[..whole].chunks_exact(W))
        .zip(hn[..whole].chunks_exact(W))
        .zip(h_prev[..whole].chunks_exact(W))
        .zip(h[..whole].chunks_exact_mut(W));
    for (((((((gr, gz), gn), hr), hz), hn), hp), h) in blocks {
        let gr: &mut [f32; W] = gr.try_into().expect("block of W");
        let gz: &mut [f32; W] = gz.try_into().expect("block of W");
        let gn: &mut [f32; W] = gn.try_into().expect("block of W");
        let hr: &[f32; W] = hr.try_into().expect("block of W");
        let hz: &[f32; W] = hz.try_into().expect("block of W");
        let hn: &[f32; W] = hn.try_into().expect("block of W");
        let hp: &[f32; W] = hp.try_into().expect("block of W");
        let h: &mut [f32; W] = h.try_into().expect("block of W");
        for j in 0..W {
            gru_unit(
                &mut gr[j],
                &mut gz[j],
                &mut gn[j],
                [hr[j], hz[j], hn[j]],
                hp[j],
                &mut h[j],
            );
        }
    }
    for j in whole..hd {
        gru_unit(
            &mut gr[j],
            &mut gz[j],
            &mut gn[j],
            [hr[j], hz[j], hn[j]],
            h_prev[j],
            &mut h[j],
        );
    }
}

/// One hidden unit of [`gru_step`]: `hg` holds its `r, z, n` hidden projections.
#[inline(always)]
fn gru_unit(gr: &mut f32, gz: &mut f32, gn: &mut f32, hg: [f32; 3], h_prev: f32, h: &mut f32) {
    let r = act::sigmoid(*gr + hg[0]);
    let z = act::sigmoid(*gz + hg[1]);
    let n = act::tanh(*gn + r * hg[2]);
    *gr = r;
    *gz = z;
    *gn = n;
    *h = (1.0 - z) * n + z * h_prev;
}

/// Gradients of one live GRU step: from the activations `g` `[3H]`, the hidden
/// projection's `n` part `hn` `[H]`, `h_prev` and `dh = dy + dh_carry` `[H]`, writes the
/// gradients of the input projection `dxg` and of the hidden projection `dhg` `[3H]`,
/// and replaces `dh_carry` with the part of `dL/dh_prev` that bypasses `W_hh` (`dh z`).
#[inline(always)]
fn gru_step_backward(
    g: &[f32],
    hn: &[f32],
    h_prev: &[f32],
    dy: &[f32],
    dh_carry: &mut [f32],
    dxg: &mut [f32],
    dhg: &mut [f32],
) {
    let hd = hn.len();
    let (gr, gz, gn) = (&g[..hd], &g[hd..2 * hd], &g[2 * hd..3 * hd]);
    let (h_prev, dy, dh_carry) = (&h_prev[..hd], &dy[..hd], &mut dh_carry[..hd]);
    let (dxg, dhg) = (&mut dxg[..3 * hd], &mut dhg[..3 * hd]);
    for j in 0..hd {
        let (r, z, n) = (gr[j], gz[j], gn[j]);
        let dh = dy[j] + dh_carry[j];
        let dn = dh * (1.0 - z) * (1.0 - n * n);
        let dz = dh * (h_prev[j] - n) * z * (1.0 - z);
        let dr = dn * hn[j] * r * (1.0 - r);
        dxg[j] = dr;
        dxg[hd + j] = dz;
        dxg[2 * hd + j] = dn;
        dhg[j] = dr;
        dhg[hd + j] = dz;
        dhg[2 * hd + j] = dn * r;
        dh_carry[j] = dh * z;
    }
}

/// One direction of a GRU layer: `weight_ih` `[3H, I]`, `weight_hh` `[3H, H]`,
/// `bias_ih`, `bias_hh` `[3H]`, rows in gate order reset, update, new.
#[derive(Debug, Clone, PartialEq)]
pub struct Gru {
    pub weight_ih: Array2<f32>,
    pub weight_hh: Array2<f32>,
    pub bias_ih: Array1<f32>,
    pub bias_hh: Array1<f32>,
    pub reverse: bool,
    pub suffix: String,
}

recurrent_module!(Gru, "GRU", 3);

/// What [`Gru::backward`] needs.
#[derive(Debug, Clone)]
pub struct GruCache {
    x: Array3<f32>,
    /// `r, z, n` activations `[T, B, 3H]`.
    gates: Array3<f32>,
    /// `W_hn h_prev + b_hn` `[T, B, H]` (what the reset gate multiplies).
    hn: Array3<f32>,
    h: Array3<f32>,
    live: Option<Array2<bool>>,
}

impl Gru {
    /// `x` `[T, B, I]` -> output `[T, B, H]` and cache; `lengths` `[B]` marks live steps.
    pub fn forward(
        &self,
        x: ArrayView3<f32>,
        lengths: Option<&[usize]>,
    ) -> Result<(Array3<f32>, GruCache)> {
        check_shape(
            &self.name(),
            "input",
            x.shape(),
            &[None, None, Some(self.input_dim())],
        )?;
        let (steps, batch, _) = x.dim();
        let live = live_mask(&self.name(), steps, batch, lengths)?;
        let hd = self.hidden();
        let x = x.as_standard_layout().into_owned();
        let mut gates = project(&x, &self.weight_ih, &self.bias_ih);
        let w_hh_t = transpose(self.weight_hh.view());
        let mut hn = Array3::<f32>::zeros((steps, batch, hd));
        let mut h = Array3::<f32>::zeros((steps, batch, hd));
        let mut hg = Array2::<f32>::zeros((batch, 3 * hd));
        // The previous step's output; zero before the first step and after a dead one.
        let mut h_prev = Array2::<f32>::zeros((batch, hd));
        for (t, prev) in order(self.reverse, steps) {
            hg.assign(
                &self
                    .bias_hh
                    .broadcast((batch, 3 * hd))
                    .expect("bias is [3H]"),
            );
            if prev.is_some() {
                matmul(hg.view_mut(), h_prev.view(), w_hh_t.view(), true);
            }
            for b in 0..batch {
                if !live.as_ref().is_none_or(|l| l[(t, b)]) {
                    continue;
                }
                let mut g = gates.slice_mut(s![t, b, ..]);
                let mut hr = h.slice_mut(s![t, b, ..]);
                gru_step(
                    g.as_slice_mut().expect("contiguous"),
                    hg.row(b).as_slice().expect("contiguous"),
                    h_prev.row(b).as_slice().expect("contiguous"),
                    hr.as_slice_mut().expect("contiguous"),
                );
                hn.slice_mut(s![t, b, ..])
                    .assign(&hg.slice(s![b, 2 * hd..]));
            }
            h_prev.assign(&h.slice(s![t, .., ..]));
        }
        let cache = GruCache {
            x,
            gates,
            hn,
            h: h.clone(),
            live,
        };
        Ok((h, cache))
    }

    #[inline(always)]
    fn infer_impl(&self, x: ArrayView2<f32>, w: &PackedRecurrent) -> Array2<f32> {
        let steps = x.nrows();
        let hd = self.hidden();
        let mut gates = Array2::zeros((steps, 3 * hd));
        gates.assign(
            &self
                .bias_ih
                .broadcast((steps, 3 * hd))
                .expect("bias is [3H]"),
        );
        // All steps' input projections at once.
        w.input_projection(gates.view_mut(), x, self.weight_ih.view());
        let w_hh = &w.hh;
        let mut h = Array2::<f32>::zeros((steps, hd));
        let (mut h_prev, mut hg) = (vec![0f32; hd], vec![0f32; 3 * hd]);
        // A slice, once: ndarray's element iterator copied it one checked element at
        // a time, every step.
        let bias_hh = self.bias_hh.to_vec();
        for (t, prev) in order(self.reverse, steps) {
            hg.copy_from_slice(&bias_hh);
            if prev.is_some() {
                w_hh.gemv_acc(&mut hg, &h_prev);
            }
            let mut g = gates.row_mut(t);
            let mut ht = h.row_mut(t);
            let ht = ht.as_slice_mut().expect("contiguous");
            gru_step(g.as_slice_mut().expect("contiguous"), &hg, &h_prev, ht);
            h_prev.copy_from_slice(ht);
        }
        h
    }

    /// Adds parameter gradients into `grads` and returns `dL/dx` `[T, B, I]` for
    /// `dy` `[T, B, H]`.
    pub fn backward(
        &self,
        cache: &GruCache,
        dy: ArrayView3<f32>,
        grads: &mut Gru,
    ) -> Result<Array3<f32>> {
        Ok(self
            .backward_to(cache, dy, grads, true)?
            .expect("the input gradient was asked for"))
    }

    /// [`Gru::backward`], returning `dL/dx` only if `input_grad` (see
    /// [`Recurrent::backward_to`](crate::recurrent::Recurrent::backward_to)).
    pub fn backward_to(
        &self,
        cache: &GruCache,
        dy: ArrayView3<f32>,
        grads: &mut Gru,
        input_grad: bool,
    ) -> Result<Option<Array3<f32>>> {
        let (steps, batch, _) = cache.x.dim();
        let hd = self.hidden();
        check_shape(
            &self.name(),
            "output gradient",
            dy.shape(),
            &[Some(steps), Some(batch), Some(hd)],
        )?;
        let ord = order(self.reverse, steps);
        let h_prev = shifted(&cache.h, &ord);
        let dy = dy.as_standard_layout();
        let mut dxg = Array3::<f32>::zeros((steps, batch, 3 * hd));
        let mut dhg = Array3::<f32>::zeros((steps, batch, 3 * hd));
        let mut carry = Array2::<f32>::zeros((batch, hd));
        for &(t, prev) in ord.iter().rev() {
            for b in 0..batch {
                let mut dhc = carry.row_mut(b);
                if !cache.live.as_ref().is_none_or(|l| l[(t, b)]) {
                    // A dead step's state was forced to zero: nothing flows through it.
                    dhc.fill(0.0);
                    continue;
                }
                let mut dxr = dxg.slice_mut(s![t, b, ..]);
                let mut dhr = dhg.slice_mut(s![t, b, ..]);
                gru_step_backward(
                    cache
                        .gates
                        .slice(s![t, b, ..])
                        .as_slice()
                        .expect("contiguous"),
                    cache.hn.slice(s![t, b, ..]).as_slice().expect("contiguous"),
                    h_prev.slice(s![t, b, ..]).as_slice().expect("contiguous"),
                    dy.slice(s![t, b, ..]).as_slice().expect("contiguous"),
                    dhc.as_slice_mut().expect("contiguous"),
                    dxr.as_slice_mut().expect("contiguous"),
                    dhr.as_slice_mut().expect("contiguous"),
                );
            }
            if prev.is_some() {
                matmul(
                    carry.view_mut(),
                    dhg.slice(s![t, .., ..]),
                    self.weight_hh.view(),
                    true,
                );
            }
        }
        Ok(projection_grads(
            &cache.x,
            &h_prev,
            &dxg,
            &dhg,
            &self.weight_ih,
            &mut grads.weight_ih,
            &mut grads.weight_hh,
            &mut grads.bias_ih,
            &mut grads.bias_hh,
            input_grad,
        ))
    }
}

/// One direction of an Elman RNN layer with tanh: `h' = tanh(W_ih x + b_ih + W_hh h +
/// b_hh)`; `weight_ih` `[H, I]`, `weight_hh` `[H, H]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Elman {
    pub weight_ih: Array2<f32>,
    pub weight_hh: Array2<f32>,
    pub bias_ih: Array1<f32>,
    pub bias_hh: Array1<f32>,
    pub reverse: bool,
    pub suffix: String,
}

recurrent_module!(Elman, "RNN", 1);

/// What [`Elman::backward`] needs.
#[derive(Debug, Clone)]
pub struct ElmanCache {
    x: Array3<f32>,
    h: Array3<f32>,
    live: Option<Array2<bool>>,
}

impl Elman {
    /// `x` `[T, B, I]` -> output `[T, B, H]` and cache; `lengths` `[B]` marks live steps.
    pub fn forward(
        &self,
        x: ArrayView3<f32>,
        lengths: Option<&[usize]>,
    ) -> Result<(Array3<f32>, ElmanCache)> {
        check_shape(
            &self.name(),
            "input",
            x.shape(),
            &[None, None, Some(self.input_dim())],
        )?;
        let (steps, batch, _) = x.dim();
        let live = live_mask(&self.name(), steps, batch, lengths)?;
        let x = x.as_standard_layout().into_owned();
        let bias = &self.bias_ih + &self.bias_hh;
        let mut h = project(&x, &self.weight_ih, &bias);
        let w_hh_t = transpose(self.weight_hh.view());
        for (t, prev) in order(self.reverse, steps) {
            if let Some(p) = prev {
                let (mut cur, before) = h.multi_slice_mut((s![t, .., ..], s![p, .., ..]));
                matmul(cur.view_mut(), before.view(), w_hh_t.view(), true);
            }
            for b in 0..batch {
                let alive = live.as_ref().is_none_or(|l| l[(t, b)]);
                h.slice_mut(s![t, b, ..])
                    .mapv_inplace(|v| if alive { act::tanh(v) } else { 0.0 });
            }
        }
        let cache = ElmanCache {
            x,
            h: h.clone(),
            live,
        };
        Ok((h, cache))
    }

    #[inline(always)]
    fn infer_impl(&self, x: ArrayView2<f32>, w: &PackedRecurrent) -> Array2<f32> {
        let steps = x.nrows();
        let hd = self.hidden();
        let bias = &self.bias_ih + &self.bias_hh;
        let mut h = Array2::zeros((steps, hd));
        h.assign(&bias.broadcast((steps, hd)).expect("bias is [H]"));
        w.input_projection(h.view_mut(), x, self.weight_ih.view());
        let w_hh = &w.hh;
        let mut h_prev = vec![0f32; hd];
        for (t, prev) in order(self.reverse, steps) {
            let mut ht = h.row_mut(t);
            let ht = ht.as_slice_mut().expect("contiguous");
            if prev.is_some() {
                w_hh.gemv_acc(ht, &h_prev);
            }
            for v in ht.iter_mut() {
                *v = act::tanh(*v);
            }
            h_prev.copy_from_slice(ht);
        }
        h
    }

    /// Adds parameter gradients into `grads` and returns `dL/dx` `[T, B, I]` for
    /// `dy` `[T, B, H]`.
    pub fn backward(
        &self,
        cache: &ElmanCache,
        dy: ArrayView3<f32>,
        grads: &mut Elman,
    ) -> Result<Array3<f32>> {
        Ok(self
            .backward_to(cache, dy, grads, true)?
            .expect("the input gradient was asked for"))
    }

    /// [`Elman::backward`], returning `dL/dx` only if `input_grad` (see
    /// [`Recurrent::backward_to`](crate::recurrent::Recurrent::backward_to)).
    pub fn backward_to(
        &self,
        cache: &ElmanCache,
        dy: ArrayView3<f32>,
        grads: &mut Elman,
        input_grad: bool,
    ) -> Result<Option<Array3<f32>>> {
        let (steps, batch, _) = cache.x.dim();
        let hd = self.hidden();
        check_shape(
            &self.name(),
            "output gradient",
            dy.shape(),
            &[Some(steps), Some(batch), Some(hd)],
        )?;
        let ord = order(self.reverse, steps);
        let mut dpre = Array3::<f32>::zeros((steps, batch, hd));
        let mut carry = Array2::<f32>::zeros((batch, hd));
        for &(t, prev) in ord.iter().rev() {
            for b in 0..batch {
                if !cache.live.as_ref().is_none_or(|l| l[(t, b)]) {
                    continue;
                }
                for j in 0..hd {
                    let hv = cache.h[(t, b, j)];
                    dpre[(t, b, j)] = (dy[(t, b, j)] + carry[(b, j)]) * (1.0 - hv * hv);
                }
            }
            if prev.is_some() {
                matmul(
                    carry.view_mut(),
                    dpre.slice(s![t, .., ..]),
                    self.weight_hh.view(),
                    false,
                );
            }
        }
        let h_prev = shifted(&cache.h, &ord);
        Ok(projection_grads(
            &cache.x,
            &h_prev,
            &dpre,
            &dpre,
            &self.weight_ih,
            &mut grads.weight_ih,
            &mut grads.weight_hh,
            &mut grads.bias_ih,
            &mut grads.bias_hh,
            input_grad,
        ))
    }
}

/// A bidirectional GRU layer, `[T, B, I]` -> `[T, B, 2H]` (see [`Bidirectional`]).
pub type BiGru = Bidirectional<Gru>;
/// What [`BiGru`]'s backward needs.
pub type BiGruCache = BidirectionalCache<Gru>;
/// A bidirectional Elman (tanh) RNN layer, `[T, B, I]` -> `[T, B, 2H]` (see
/// [`Bidirectional`]).
pub type BiElman = Bidirectional<Elman>;
/// What [`BiElman`]'s backward needs.
pub type BiElmanCache = BidirectionalCache<Elman>;

/// Adds `x w^T` into `out` for one step: `x` `[B, K]`, `w` `[G, K]` as stored, `w_t`
/// its row-major transpose `[K, G]` if the caller prepared one, `out` `[B, G]`.
///
/// With `gemv`, a single row takes a matrix-vector product on `packed` if the caller
/// packed `w`, else on `w` as stored (greedy decoding: gemm's kernels lose to
/// matrix-vector products there). Otherwise int8 `packed` weights take all rows at
/// once, and f32 or bf16 run gemm on `w_t`, or on a transposed view of `w` (correct,
/// but gemm then repacks the weights on every call).
pub(crate) fn step_product(
    mut out: ArrayViewMut2<f32>,
    x: ArrayView2<f32>,
    w: &Array2<f32>,
    w_t: Option<&Array2<f32>>,
    packed: Option<&PackedMatrix>,
    gemv: bool,
) {
    if gemv && x.nrows() == 1 {
        let x = x.row(0).to_vec();
        let mut y = out.row_mut(0);
        let y = y.as_slice_mut().expect("fresh arrays are contiguous");
        match packed {
            Some(p) => p.gemv_acc(y, &x),
            None => gemv_acc(y, w.view(), &x),
        }
    } else if let Some(p) = packed.filter(|p| p.format() == WeightFormat::Int8) {
        // int8 rows share each weight read, and each row gets exactly what it would
        // alone (so a beam of one is greedy decoding).
        p.gemm_acc(out, x);
    } else if let Some(w_t) = w_t {
        matmul(out, x, w_t.view(), true);
    } else {
        matmul(out, x, w.t(), true);
    }
}

/// The transpose of `w` with its values as `format` stores them, so that batched
/// steps (gemm, in f32 and bf16) compute with the same weights as single-row steps
/// (packed).
pub(crate) fn transpose_as(w: &Array2<f32>, format: WeightFormat) -> Array2<f32> {
    match format {
        WeightFormat::F32 => transpose(w.view()),
        _ => transpose(format.stored(w.view()).view()),
    }
}

/// Refuses weights prepared from a cell of another shape (they would index out of
/// their arrays): the transposes `[I - given, G]` and `[H, G]` of `weights` (`[G, I]`,
/// `[G, H]`; the first `given` input columns left to the caller), the prepared bias
/// length, and any packed copies.
pub(crate) fn check_prepared(
    layer: &str,
    weights: [&Array2<f32>; 2],
    transposed: [&Array2<f32>; 2],
    given: usize,
    bias: usize,
    packed: Option<&[PackedMatrix; 2]>,
) -> Result<()> {
    let gates = weights[0].nrows();
    for (name, w, t, given) in [
        ("prepared weight_ih", weights[0], transposed[0], given),
        ("prepared weight_hh", weights[1], transposed[1], 0),
    ] {
        check_shape(
            layer,
            name,
            t.shape(),
            &[Some(w.ncols().saturating_sub(given)), Some(w.nrows())],
        )?;
    }
    check_shape(layer, "prepared bias", &[bias], &[Some(gates)])?;
    if let Some([w_ih, w_hh]) = packed {
        check_packed(layer, w_ih, weights[0].dim())?;
        check_packed(layer, w_hh, weights[1].dim())?;
    }
    Ok(())
}

/// A cell's `weight_ih` and `weight_hh`, packed.
pub(crate) fn pack_pair(
    w_ih: &Array2<f32>,
    w_hh: &Array2<f32>,
    format: WeightFormat,
) -> [PackedMatrix; 2] {
    [
        PackedMatrix::new(w_ih.view(), format),
        PackedMatrix::new(w_hh.view(), format),
    ]
}

/// `[B, G]` filled with bias `b` `[G]`.
fn bias_rows(b: &Array1<f32>, batch: usize) -> Array2<f32> {
    // Assigned into a fresh array rather than copied from the broadcast view, whose
    // copy's layout ndarray leaves unspecified: callers slice its rows.
    let mut out = Array2::zeros((batch, b.len()));
    out.assign(
        &b.broadcast((batch, b.len()))
            .expect("[G] broadcasts to [B, G]"),
    );
    out
}

/// Checks a cell step's `x` `[B, I]` and `h_prev` `[B, H]`; returns `B`.
fn check_step(
    layer: &str,
    x: ArrayView2<f32>,
    h_prev: ArrayView2<f32>,
    input: usize,
    hidden: usize,
) -> Result<usize> {
    check_shape(layer, "input", x.shape(), &[None, Some(input)])?;
    let batch = x.nrows();
    check_shape(
        layer,
        "h_prev",
        h_prev.shape(),
        &[Some(batch), Some(hidden)],
    )?;
    Ok(batch)
}

/// One GRU step at a time, for decoders whose next input depends on their last output
/// (PyTorch's `nn.GRUCell`: `weight_ih` `[3H, I]`, `weight_hh` `[3H, H]`, `bias_ih`,
/// `bias_hh` `[3H]`, gates `r, z, n`, reset-after as in [`Gru`]). The state is `h` alone.
#[derive(Debug, Clone, PartialEq)]
pub struct GruCell {
    pub weight_ih: Array2<f32>,
    pub weight_hh: Array2<f32>,
    pub bias_ih: Array1<f32>,
    pub bias_hh: Array1<f32>,
}

cell_module!(GruCell, 3);

/// A [`GruCell`] with its weights transposed for fast batched steps. Build it once per
/// batch (weights must not change while it is in use).
#[derive(Debug, Clone)]
pub struct PreparedGruCell {
    w_ih_t: Array2<f32>,
    w_hh_t: Array2<f32>,
    /// `weight_ih` and `weight_hh` packed for single-row steps (and, in int8, for
    /// several rows too), if asked for.
    packed: Option<[PackedMatrix; 2]>,
}

/// What [`GruCell::backward`] needs from one step.
#[derive(Debug, Clone)]
pub struct GruCellCache {
    x: Array2<f32>,
    h_prev: Array2<f32>,
    /// `r, z, n` activations `[B, 3H]`.
    gates: Array2<f32>,
    /// `W_hn h_prev + b_hn` `[B, H]` (what the reset gate multiplies).
    hn: Array2<f32>,
}

impl GruCell {
    /// Transposed weights for [`GruCell::forward`] and [`GruCell::step`].
    pub fn prepare(&self) -> PreparedGruCell {
        PreparedGruCell {
            w_ih_t: transpose(self.weight_ih.view()),
            w_hh_t: transpose(self.weight_hh.view()),
            packed: None,
        }
    }

    /// [`GruCell::prepare`] for decoding, with both weights also packed in `format` for
    /// single-row [`GruCell::step`]s; in bf16 the transposes hold the same rounded
    /// values, so every step of a search computes with one set of weights.
    pub fn prepare_packed(&self, format: WeightFormat) -> PreparedGruCell {
        PreparedGruCell {
            w_ih_t: transpose_as(&self.weight_ih, format),
            w_hh_t: transpose_as(&self.weight_hh, format),
            packed: Some(pack_pair(&self.weight_ih, &self.weight_hh, format)),
        }
    }

    /// Shared by `step` and `forward`: new `h` `[B, H]`, the activations `[B, 3H]` and
    /// the hidden projection `[B, 3H]`.
    fn run(
        &self,
        prepared: Option<&PreparedGruCell>,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
        gemv: bool,
    ) -> Result<(Array2<f32>, Array2<f32>, Array2<f32>)> {
        let hd = self.hidden();
        let batch = check_step("GRUCell", x, h_prev, self.input_dim(), hd)?;
        if let Some(p) = prepared {
            check_prepared(
                "GRUCell",
                [&self.weight_ih, &self.weight_hh],
                [&p.w_ih_t, &p.w_hh_t],
                0,
                self.bias_ih.len(),
                p.packed.as_ref(),
            )?;
        }
        // Input and hidden projections stay apart: the reset gate scales the hidden
        // projection of `n` alone.
        let mut gates = bias_rows(&self.bias_ih, batch);
        step_product(
            gates.view_mut(),
            x,
            &self.weight_ih,
            prepared.map(|p| &p.w_ih_t),
            prepared.and_then(|p| p.packed.as_ref()).map(|[w, _]| w),
            gemv,
        );
        let mut hg = bias_rows(&self.bias_hh, batch);
        step_product(
            hg.view_mut(),
            h_prev,
            &self.weight_hh,
            prepared.map(|p| &p.w_hh_t),
            prepared.and_then(|p| p.packed.as_ref()).map(|[_, w]| w),
            gemv,
        );
        let h_prev = h_prev.as_standard_layout();
        let mut h = Array2::zeros((batch, hd));
        for b in 0..batch {
            let mut g = gates.row_mut(b);
            let mut hr = h.row_mut(b);
            gru_step(
                g.as_slice_mut().expect("contiguous"),
                hg.row(b).as_slice().expect("contiguous"),
                h_prev.row(b).as_slice().expect("contiguous"),
                hr.as_slice_mut().expect("contiguous"),
            );
        }
        Ok((h, gates, hg))
    }

    /// One inference step, no cache: `x` `[B, I]`, `h_prev` `[B, H]` -> new `h`
    /// `[B, H]`. A single row (greedy decoding) takes matrix-vector products on
    /// `prepared`'s packed weights if it has them ([`GruCell::prepare_packed`]), else
    /// on the weights as stored; more rows run int8 packed products, or gemm on
    /// `prepared`'s transposed
    /// weights, or on transposed views without it.
    pub fn step(
        &self,
        prepared: Option<&PreparedGruCell>,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
    ) -> Result<Array2<f32>> {
        Ok(self.run(prepared, x, h_prev, true)?.0)
    }

    /// One step: `x` `[B, I]`, `h_prev` `[B, H]` -> new `h` `[B, H]` and the cache.
    /// `prepared` must come from this cell's current weights.
    pub fn forward(
        &self,
        prepared: &PreparedGruCell,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, GruCellCache)> {
        let hd = self.hidden();
        let (h, gates, hg) = self.run(Some(prepared), x, h_prev, false)?;
        let cache = GruCellCache {
            x: x.to_owned(),
            h_prev: h_prev.as_standard_layout().into_owned(),
            gates,
            hn: hg.slice(s![.., 2 * hd..]).as_standard_layout().into_owned(),
        };
        Ok((h, cache))
    }

    /// Gradients of one step: given `dh` `[B, H]` (the gradient reaching the new state
    /// from everything after it), adds parameter gradients into `grads` and returns
    /// `(dx [B, I], dh_prev [B, H])`.
    pub fn backward(
        &self,
        cache: &GruCellCache,
        dh: ArrayView2<f32>,
        grads: &mut GruCell,
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        let hd = self.hidden();
        let batch = cache.x.nrows();
        check_shape("GRUCell", "dh", dh.shape(), &[Some(batch), Some(hd)])?;
        let dh = dh.as_standard_layout();
        let mut dxg = Array2::<f32>::zeros((batch, 3 * hd));
        let mut dhg = Array2::<f32>::zeros((batch, 3 * hd));
        // Starts at zero as the carry and leaves holding `dh z`; `dhg W_hh` adds the rest.
        let mut dh_prev = Array2::<f32>::zeros((batch, hd));
        for b in 0..batch {
            let mut dhp = dh_prev.row_mut(b);
            let mut dxr = dxg.row_mut(b);
            let mut dhr = dhg.row_mut(b);
            gru_step_backward(
                cache.gates.row(b).as_slice().expect("contiguous"),
                cache.hn.row(b).as_slice().expect("contiguous"),
                cache.h_prev.row(b).as_slice().expect("contiguous"),
                dh.row(b).as_slice().expect("contiguous"),
                dhp.as_slice_mut().expect("contiguous"),
                dxr.as_slice_mut().expect("contiguous"),
                dhr.as_slice_mut().expect("contiguous"),
            );
        }
        matmul(grads.weight_ih.view_mut(), dxg.t(), cache.x.view(), true);
        matmul(
            grads.weight_hh.view_mut(),
            dhg.t(),
            cache.h_prev.view(),
            true,
        );
        grads.bias_ih += &dxg.sum_axis(Axis(0));
        grads.bias_hh += &dhg.sum_axis(Axis(0));
        let mut dx = Array2::zeros((batch, self.input_dim()));
        matmul(dx.view_mut(), dxg.view(), self.weight_ih.view(), false);
        matmul(dh_prev.view_mut(), dhg.view(), self.weight_hh.view(), true);
        Ok((dx, dh_prev))
    }
}

/// One Elman (tanh) RNN step at a time, for decoders (PyTorch's `nn.RNNCell` with
/// `nonlinearity='tanh'`: `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`, `weight_ih`
/// `[H, I]`, `weight_hh` `[H, H]`, `bias_ih`, `bias_hh` `[H]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ElmanCell {
    pub weight_ih: Array2<f32>,
    pub weight_hh: Array2<f32>,
    pub bias_ih: Array1<f32>,
    pub bias_hh: Array1<f32>,
}

cell_module!(ElmanCell, 1);

/// An [`ElmanCell`] with its weights transposed and biases summed for fast batched
/// steps. Build it once per batch (weights must not change while it is in use).
#[derive(Debug, Clone)]
pub struct PreparedElmanCell {
    w_ih_t: Array2<f32>,
    w_hh_t: Array2<f32>,
    bias: Array1<f32>,
    /// `weight_ih` and `weight_hh` packed for single-row steps (and, in int8, for
    /// several rows too), if asked for.
    packed: Option<[PackedMatrix; 2]>,
}

/// What [`ElmanCell::backward`] needs from one step.
#[derive(Debug, Clone)]
pub struct ElmanCellCache {
    x: Array2<f32>,
    h_prev: Array2<f32>,
    h: Array2<f32>,
}

impl ElmanCell {
    /// Transposed weights and summed bias for [`ElmanCell::forward`] and
    /// [`ElmanCell::step`].
    pub fn prepare(&self) -> PreparedElmanCell {
        PreparedElmanCell {
            w_ih_t: transpose(self.weight_ih.view()),
            w_hh_t: transpose(self.weight_hh.view()),
            bias: &self.bias_ih + &self.bias_hh,
            packed: None,
        }
    }

    /// [`ElmanCell::prepare`] for decoding, with both weights also packed in `format` for
    /// single-row [`ElmanCell::step`]s; in bf16 the transposes hold the same rounded
    /// values, so every step of a search computes with one set of weights.
    pub fn prepare_packed(&self, format: WeightFormat) -> PreparedElmanCell {
        PreparedElmanCell {
            w_ih_t: transpose_as(&self.weight_ih, format),
            w_hh_t: transpose_as(&self.weight_hh, format),
            bias: &self.bias_ih + &self.bias_hh,
            packed: Some(pack_pair(&self.weight_ih, &self.weight_hh, format)),
        }
    }

    /// Shared by `step` and `forward`: the new `h` `[B, H]`.
    fn run(
        &self,
        prepared: Option<&PreparedElmanCell>,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
        gemv: bool,
    ) -> Result<Array2<f32>> {
        let batch = check_step("RNNCell", x, h_prev, self.input_dim(), self.hidden())?;
        if let Some(p) = prepared {
            check_prepared(
                "RNNCell",
                [&self.weight_ih, &self.weight_hh],
                [&p.w_ih_t, &p.w_hh_t],
                0,
                p.bias.len(),
                p.packed.as_ref(),
            )?;
        }
        let mut h = match prepared {
            Some(p) => bias_rows(&p.bias, batch),
            None => bias_rows(&(&self.bias_ih + &self.bias_hh), batch),
        };
        step_product(
            h.view_mut(),
            x,
            &self.weight_ih,
            prepared.map(|p| &p.w_ih_t),
            prepared.and_then(|p| p.packed.as_ref()).map(|[w, _]| w),
            gemv,
        );
        step_product(
            h.view_mut(),
            h_prev,
            &self.weight_hh,
            prepared.map(|p| &p.w_hh_t),
            prepared.and_then(|p| p.packed.as_ref()).map(|[_, w]| w),
            gemv,
        );
        h.mapv_inplace(act::tanh);
        Ok(h)
    }

    /// One inference step, no cache: `x` `[B, I]`, `h_prev` `[B, H]` -> new `h`
    /// `[B, H]`. A single row takes matrix-vector products on `prepared`'s packed
    /// weights if it has them ([`ElmanCell::prepare_packed`]), else on the weights as
    /// stored; more rows run int8 packed products, or gemm on `prepared`'s transposed
    /// weights, or on transposed
    /// views without it.
    pub fn step(
        &self,
        prepared: Option<&PreparedElmanCell>,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
    ) -> Result<Array2<f32>> {
        self.run(prepared, x, h_prev, true)
    }

    /// One step: `x` `[B, I]`, `h_prev` `[B, H]` -> new `h` `[B, H]` and the cache.
    /// `prepared` must come from this cell's current weights.
    pub fn forward(
        &self,
        prepared: &PreparedElmanCell,
        x: ArrayView2<f32>,
        h_prev: ArrayView2<f32>,
    ) -> Result<(Array2<f32>, ElmanCellCache)> {
        let h = self.run(Some(prepared), x, h_prev, false)?;
        let cache = ElmanCellCache {
            x: x.to_owned(),
            h_prev: h_prev.to_owned(),
            h: h.clone(),
        };
        Ok((h, cache))
    }

    /// Gradients of one step: given `dh` `[B, H]` (the gradient reaching the new state
    /// from everything after it), adds parameter gradients into `grads` and returns
    /// `(dx [B, I], dh_prev [B, H])`.
    pub fn backward(
        &self,
        cache: &ElmanCellCache,
        dh: ArrayView2<f32>,
        grads: &mut ElmanCell,
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        let batch = cache.x.nrows();
        check_shape(
            "RNNCell",
            "dh",
            dh.shape(),
            &[Some(batch), Some(self.hidden())],
        )?;
        let dpre = &dh * &cache.h.mapv(|h| 1.0 - h * h);
        matmul(grads.weight_ih.view_mut(), dpre.t(), cache.x.view(), true);
        matmul(
            grads.weight_hh.view_mut(),
            dpre.t(),
            cache.h_prev.view(),
            true,
        );
        let db = dpre.sum_axis(Axis(0));
        grads.bias_ih += &db;
        grads.bias_hh += &db;
        let mut dx = Array2::zeros((batch, self.input_dim()));
        matmul(dx.view_mut(), dpre.view(), self.weight_ih.view(), false);
        let mut dh_prev = Array2::zeros((batch, self.hidden()));
        matmul(
            dh_prev.view_mut(),
            dpre.view(),
            self.weight_hh.view(),
            false,
        );
        Ok((dx, dh_prev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// `gru_step` as `Gru::infer_avx512` compiles it.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn gru_step_avx512(g: &mut [f32], hg: &[f32], h_prev: &[f32], h: &mut [f32]) {
        gru_step(g, hg, h_prev, h)
    }

    /// The GRU step's 16-unit blocks give the bits of the plain per-unit formula, at
    /// widths of blocks, remainder and both, in the baseline build and (on CPUs that
    /// have it) the AVX-512 one the decoder runs.
    #[test]
    fn gate_blocks_equal_the_per_unit_formula_to_the_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        #[cfg(target_arch = "x86_64")]
        let wide = crate::simd::avx512();
        #[cfg(not(target_arch = "x86_64"))]
        let wide = false;
        for (hd, avx512) in [(5, false), (16, false), (35, false), (5, true), (35, true)] {
            if avx512 && !wide {
                continue;
            }
            let g = crate::init::uniform(3 * hd, 4.0, &mut rng).to_vec();
            let hg = crate::init::uniform(3 * hd, 4.0, &mut rng).to_vec();
            let h_prev = crate::init::uniform(hd, 1.0, &mut rng).to_vec();
            let (mut fast, mut h) = (g.clone(), vec![0f32; hd]);
            if avx512 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
                unsafe {
                    gru_step_avx512(&mut fast, &hg, &h_prev, &mut h)
                };
            } else {
                gru_step(&mut fast, &hg, &h_prev, &mut h);
            }
            for j in 0..hd {
                let r = act::sigmoid(g[j] + hg[j]);
                let z = act::sigmoid(g[hd + j] + hg[hd + j]);
                let n = act::tanh(g[2 * hd + j] + r * hg[2 * hd + j]);
                let want = [r, z, n, (1.0 - z) * n + z * h_prev[j]];
                let got = [fast[j], fast[hd + j], fast[2 * hd + j], h[j]];
                assert_eq!(
                    got.map(f32::to_bits),
                    want.map(f32::to_bits),
                    "H={hd} avx512={avx512} j={j}"
                );
            }
        }
    }
}
