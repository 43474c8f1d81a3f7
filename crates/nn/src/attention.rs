//! Additive (Bahdanau / MLP) attention, as in LAS:
//! `e[b, u] = v . tanh(W_h h[u, b] + b_h + W_s s[b])`, `alpha = softmax_u(e)`,
//! `context[b] = sum_u alpha[b, u] h[u, b]`.
//!
//! `W_h h + b_h` does not depend on the decoder state, so it is computed once per
//! utterance ([`AdditiveAttention::keys`]) and each decoder step only adds `W_s s`.
//! Listener states are time-major `[U, B, D]`; positions `u >= lengths[b]` get no
//! attention.

use ndarray::{
    s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMut3, ArrayViewMutD,
};
use rand::Rng;

use crate::error::{check_shape, Error, Result};
use crate::linear::Linear;
use crate::module::{join, Module};

/// Parameters `att_h` (`[A, D]` + bias), `att_s` (`[A, S]`), `att_v` (`[1, A]`),
/// named as the PyTorch reference names them.
#[derive(Debug, Clone, PartialEq)]
pub struct AdditiveAttention {
    pub att_h: Linear,
    pub att_s: Linear,
    pub att_v: Linear,
}

/// What [`AdditiveAttention::step_backward`] needs from one step.
#[derive(Debug, Clone)]
pub struct AttentionCache {
    /// Decoder state `[B, S]`.
    s: Array2<f32>,
    /// `tanh(keys + W_s s)` `[U, B, A]`.
    t: Array3<f32>,
    /// Attention weights `[B, U]`.
    alpha: Array2<f32>,
}

impl AttentionCache {
    /// The attention weights of this step, `[B, U]` (rows sum to 1 over live positions).
    pub fn alpha(&self) -> ArrayView2<'_, f32> {
        self.alpha.view()
    }
}

impl AdditiveAttention {
    /// Listener width `D`, decoder state width `S`, attention width `A`.
    pub fn new(listener: usize, state: usize, attention: usize, rng: &mut impl Rng) -> Self {
        AdditiveAttention {
            att_h: Linear::new(listener, attention, true, rng),
            att_s: Linear::new(state, attention, false, rng),
            att_v: Linear::new(attention, 1, false, rng),
        }
    }

    /// `W_h h + b_h`: listener states `[U, B, D]` -> keys `[U, B, A]`, once per utterance.
    pub fn keys(&self, h: ArrayView3<f32>) -> Result<Array3<f32>> {
        let (u, b, d) = h.dim();
        let h = h.as_standard_layout();
        let flat = h
            .view()
            .into_shape_with_order((u * b, d))
            .expect("contiguous");
        let k = self.att_h.forward(flat)?;
        Ok(k.into_shape_with_order((u, b, self.att_h.output_dim()))
            .expect("row-major"))
    }

    /// Gradient of [`AdditiveAttention::keys`]: adds into `grads.att_h` and returns
    /// `dL/dh` `[U, B, D]` for `dkeys` `[U, B, A]`.
    pub fn keys_backward(
        &self,
        h: ArrayView3<f32>,
        dkeys: ArrayView3<f32>,
        grads: &mut AdditiveAttention,
    ) -> Result<Array3<f32>> {
        let (u, b, d) = h.dim();
        let h = h.as_standard_layout();
        let dk = dkeys.as_standard_layout();
        let a = self.att_h.output_dim();
        check_shape(
            "attention",
            "key gradient",
            dk.shape(),
            &[Some(u), Some(b), Some(a)],
        )?;
        let dh = self.att_h.backward(
            h.view()
                .into_shape_with_order((u * b, d))
                .expect("contiguous"),
            dk.view()
                .into_shape_with_order((u * b, a))
                .expect("contiguous"),
            &mut grads.att_h,
        )?;
        Ok(dh.into_shape_with_order((u, b, d)).expect("row-major"))
    }

    /// One decoder step: listener states `h` `[U, B, D]`, their `keys` `[U, B, A]`,
    /// decoder state `s` `[B, S]` -> context `[B, D]` and the cache (with the weights).
    pub fn step(
        &self,
        h: ArrayView3<f32>,
        keys: ArrayView3<f32>,
        s: ArrayView2<f32>,
        lengths: Option<&[usize]>,
    ) -> Result<(Array2<f32>, AttentionCache)> {
        let (units, batch, d) = h.dim();
        let a = self.att_h.output_dim();
        check_shape(
            "attention",
            "keys",
            keys.shape(),
            &[Some(units), Some(batch), Some(a)],
        )?;
        check_shape(
            "attention",
            "decoder state",
            s.shape(),
            &[Some(batch), Some(self.att_s.input_dim())],
        )?;
        if let Some(l) = lengths {
            if l.len() != batch || l.iter().any(|&n| n == 0 || n > units) {
                return Err(Error::Lengths {
                    layer: "attention".into(),
                    reason: format!("lengths {l:?} do not fit {batch} sequences of at most {units} positions, each at least 1"),
                });
            }
        }
        let q = self.att_s.forward(s)?; // [B, A]
        let v = self.att_v.weight.row(0);
        let mut t = Array3::<f32>::zeros((units, batch, a));
        let mut alpha = Array2::<f32>::zeros((batch, units));
        for b in 0..batch {
            let live = lengths.map_or(units, |l| l[b]);
            let qb = q.row(b);
            let mut e = alpha.row_mut(b);
            for u in 0..live {
                let mut tr = t.slice_mut(s![u, b, ..]);
                let kr = keys.slice(s![u, b, ..]);
                let mut dot = 0f32;
                for ((tv, &k), (&qv, &vv)) in
                    tr.iter_mut().zip(kr.iter()).zip(qb.iter().zip(v.iter()))
                {
                    *tv = crate::activation::tanh(k + qv);
                    dot += vv * *tv;
                }
                e[u] = dot;
            }
            // Softmax over the live positions; dead ones stay at weight 0.
            let max = e
                .slice(s![..live])
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let mut z = 0f32;
            for x in e.slice_mut(s![..live]).iter_mut() {
                *x = (*x - max).exp();
                z += *x;
            }
            e.slice_mut(s![..live]).mapv_inplace(|x| x / z);
        }
        let mut ctx = Array2::<f32>::zeros((batch, d));
        for b in 0..batch {
            let mut cr = ctx.row_mut(b);
            for u in 0..units {
                let w = alpha[(b, u)];
                if w != 0.0 {
                    cr.scaled_add(w, &h.slice(s![u, b, ..]));
                }
            }
        }
        Ok((
            ctx,
            AttentionCache {
                s: s.to_owned(),
                t,
                alpha,
            },
        ))
    }

    /// Gradients of one step for `d_ctx` `[B, D]`: adds into `grads.att_s`,
    /// `grads.att_v`, into `dh` `[U, B, D]` and `dkeys` `[U, B, A]` (accumulated over
    /// steps by the caller, then passed to [`AdditiveAttention::keys_backward`]), and
    /// returns `dL/ds` `[B, S]`.
    pub fn step_backward(
        &self,
        cache: &AttentionCache,
        h: ArrayView3<f32>,
        d_ctx: ArrayView2<f32>,
        mut dh: ArrayViewMut3<f32>,
        mut dkeys: ArrayViewMut3<f32>,
        grads: &mut AdditiveAttention,
    ) -> Result<Array2<f32>> {
        let (units, batch, d) = h.dim();
        let a = self.att_h.output_dim();
        check_shape(
            "attention",
            "context gradient",
            d_ctx.shape(),
            &[Some(batch), Some(d)],
        )?;
        check_shape(
            "attention",
            "dh",
            dh.shape(),
            &[Some(units), Some(batch), Some(d)],
        )?;
        check_shape(
            "attention",
            "dkeys",
            dkeys.shape(),
            &[Some(units), Some(batch), Some(a)],
        )?;
        let v = self.att_v.weight.row(0);
        let mut dq = Array2::<f32>::zeros((batch, a));
        let mut dv = ndarray::Array1::<f32>::zeros(a);
        for b in 0..batch {
            let dc = d_ctx.row(b);
            // d alpha[u] = d_ctx . h[u]; context gradient flows into h weighted by alpha.
            let mut dalpha = vec![0f32; units];
            for (u, da) in dalpha.iter_mut().enumerate() {
                let w = cache.alpha[(b, u)];
                if w == 0.0 {
                    continue;
                }
                *da = dc.dot(&h.slice(s![u, b, ..]));
                dh.slice_mut(s![u, b, ..]).scaled_add(w, &dc);
            }
            // Softmax backward: de = alpha * (dalpha - sum(alpha * dalpha)).
            let mean: f32 = (0..units).map(|u| cache.alpha[(b, u)] * dalpha[u]).sum();
            for (u, &da) in dalpha.iter().enumerate() {
                let w = cache.alpha[(b, u)];
                if w == 0.0 {
                    continue;
                }
                let de = w * (da - mean);
                let tr = cache.t.slice(s![u, b, ..]);
                let mut dk = dkeys.slice_mut(s![u, b, ..]);
                let mut dqb = dq.row_mut(b);
                for j in 0..a {
                    let tv = tr[j];
                    dv[j] += de * tv;
                    let dz = de * v[j] * (1.0 - tv * tv);
                    dk[j] += dz;
                    dqb[j] += dz;
                }
            }
        }
        let mut gv = grads.att_v.weight.row_mut(0);
        gv += &dv;
        let ds = self
            .att_s
            .backward(cache.s.view(), dq.view(), &mut grads.att_s)?;
        Ok(ds)
    }
}

impl Module for AdditiveAttention {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.att_h.visit(&join(prefix, "att_h"), f);
        self.att_s.visit(&join(prefix, "att_s"), f);
        self.att_v.visit(&join(prefix, "att_v"), f);
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.att_h.visit_mut(&join(prefix, "att_h"), f);
        self.att_s.visit_mut(&join(prefix, "att_s"), f);
        self.att_v.visit_mut(&join(prefix, "att_v"), f);
    }

    fn zeros_like(&self) -> Self {
        AdditiveAttention {
            att_h: self.att_h.zeros_like(),
            att_s: self.att_s.zeros_like(),
            att_v: self.att_v.zeros_like(),
        }
    }
}
