//! GRU and Elman (tanh) recurrent layers over whole sequences, one direction
//! (PyTorch's `nn.GRU` and `nn.RNN`: GRU gates packed `r, z, n`, zero initial state).
//!
//! Shapes, variable lengths and naming follow [`crate::Lstm`]: input `[T, B, I]`,
//! output `[T, B, H]`, dead steps output zero and pass on a zero state.

use ndarray::{s, Array1, Array2, Array3, ArrayView3, Axis};

use crate::activation as act;
use crate::error::{check_shape, Result};
use crate::linalg::{matmul, transpose};
use crate::lstm::live_mask;
use crate::recurrent::{order, recurrent_module};

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
        matmul(o2, x2, transpose(w.view()).view(), true);
    }
    out
}

/// Parameter and input gradients shared by both layers: `dxg`, `dhg` `[T, B, G]` are
/// the gradients of the input and hidden projections (biases included).
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
) -> Array3<f32> {
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
    let mut dx = Array3::zeros((steps, batch, input));
    matmul(
        dx.view_mut()
            .into_shape_with_order((n, input))
            .expect("contiguous"),
        dx2,
        w_ih.view(),
        false,
    );
    dx
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
        for (t, prev) in order(self.reverse, steps) {
            hg.assign(
                &self
                    .bias_hh
                    .broadcast((batch, 3 * hd))
                    .expect("bias is [3H]"),
            );
            if let Some(p) = prev {
                matmul(hg.view_mut(), h.slice(s![p, .., ..]), w_hh_t.view(), true);
            }
            for b in 0..batch {
                if !live.as_ref().is_none_or(|l| l[(t, b)]) {
                    continue;
                }
                let hp: Vec<f32> = match prev {
                    Some(p) => h.slice(s![p, b, ..]).to_vec(),
                    None => vec![0.0; hd],
                };
                for j in 0..hd {
                    let r = act::sigmoid(gates[(t, b, j)] + hg[(b, j)]);
                    let z = act::sigmoid(gates[(t, b, hd + j)] + hg[(b, hd + j)]);
                    let hnj = hg[(b, 2 * hd + j)];
                    let n = act::tanh(gates[(t, b, 2 * hd + j)] + r * hnj);
                    gates[(t, b, j)] = r;
                    gates[(t, b, hd + j)] = z;
                    gates[(t, b, 2 * hd + j)] = n;
                    hn[(t, b, j)] = hnj;
                    h[(t, b, j)] = (1.0 - z) * n + z * hp[j];
                }
            }
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

    /// Adds parameter gradients into `grads` and returns `dL/dx` `[T, B, I]` for
    /// `dy` `[T, B, H]`.
    pub fn backward(
        &self,
        cache: &GruCache,
        dy: ArrayView3<f32>,
        grads: &mut Gru,
    ) -> Result<Array3<f32>> {
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
        let mut dxg = Array3::<f32>::zeros((steps, batch, 3 * hd));
        let mut dhg = Array3::<f32>::zeros((steps, batch, 3 * hd));
        let mut carry = Array2::<f32>::zeros((batch, hd));
        for &(t, prev) in ord.iter().rev() {
            let mut direct = Array2::<f32>::zeros((batch, hd));
            for b in 0..batch {
                if !cache.live.as_ref().is_none_or(|l| l[(t, b)]) {
                    continue;
                }
                for j in 0..hd {
                    let (r, z, n) = (
                        cache.gates[(t, b, j)],
                        cache.gates[(t, b, hd + j)],
                        cache.gates[(t, b, 2 * hd + j)],
                    );
                    let dh = dy[(t, b, j)] + carry[(b, j)];
                    let dn = dh * (1.0 - z) * (1.0 - n * n);
                    let dz = dh * (h_prev[(t, b, j)] - n) * z * (1.0 - z);
                    let dr = dn * cache.hn[(t, b, j)] * r * (1.0 - r);
                    dxg[(t, b, j)] = dr;
                    dxg[(t, b, hd + j)] = dz;
                    dxg[(t, b, 2 * hd + j)] = dn;
                    dhg[(t, b, j)] = dr;
                    dhg[(t, b, hd + j)] = dz;
                    dhg[(t, b, 2 * hd + j)] = dn * r;
                    direct[(b, j)] = dh * z;
                }
            }
            if prev.is_some() {
                carry = direct;
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

    /// Adds parameter gradients into `grads` and returns `dL/dx` `[T, B, I]` for
    /// `dy` `[T, B, H]`.
    pub fn backward(
        &self,
        cache: &ElmanCache,
        dy: ArrayView3<f32>,
        grads: &mut Elman,
    ) -> Result<Array3<f32>> {
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
        ))
    }
}
