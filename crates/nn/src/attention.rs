//! Additive (Bahdanau / MLP) attention, as in LAS:
//! `e[b, u] = v . tanh(W_h h[u, b] + b_h + W_s s[b])`, `alpha = softmax_u(e)`,
//! `context[b] = sum_u alpha[b, u] h[u, b]`.
//!
//! `W_h h + b_h` does not depend on the decoder state, so it is computed once per
//! utterance ([`AdditiveAttention::keys`]) and each decoder step only adds `W_s s`.
//! Listener states are time-major `[U, B, D]`; positions `u >= lengths[b]` get no
//! attention.
//!
//! Location-aware attention (Chorowski et al., 2015) adds a term that depends on where
//! the previous step looked: `f = conv(alpha_prev)` with `K` filters of odd width `W`
//! (zero padded, centred), and `e[b, u] = v . tanh(... + W_f f[b, u])`. Content alone
//! cannot tell two similar stretches of an utterance apart; knowing the previous
//! position lets the decoder move forward through the audio. The first step's
//! previous weights are uniform over the live positions
//! ([`AdditiveAttention::initial_weights`]).

use ndarray::{
    s, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMut3, ArrayViewMutD,
};
use rand::Rng;

use crate::error::{check_shape, Error, Result};
use crate::linalg::matmul;
use crate::linear::Linear;
use crate::module::{join, Module};
use crate::packed::Recurrence;

/// Parameters `att_h` (`[A, D]` + bias), `att_s` (`[A, S]`), `att_v` (`[1, A]`),
/// named as the PyTorch reference names them; with location awareness also
/// `att_conv.weight` `[K, W]` and `att_loc.weight` `[A, K]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdditiveAttention {
    pub att_h: Linear,
    pub att_s: Linear,
    pub att_v: Linear,
    pub location: Option<Location>,
}

/// The location term's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Filters over the previous weights `[K, W]`, `W` odd, no bias.
    pub conv: Array2<f32>,
    /// Filter outputs to attention space, `[A, K]`, no bias.
    pub proj: Linear,
}

/// `att_s`'s weight packed for the decoder steps' query products: `q = W_s s` forward
/// and `ds = dq W_s` backward. Through gemm, each of those few-row products repacked
/// the whole weight (0.5 MB at the reference size) at every step: about 2% of the
/// reference training step. Build it once per batch with
/// [`AdditiveAttention::prepare`] (weights must not change while it is in use).
///
/// On CPUs without AVX-512 the packs are gemm on transposed copies (see
/// `packed::Recurrence`).
#[derive(Debug, Clone)]
pub struct PreparedAttention {
    query: Recurrence,
    query_t: Recurrence,
}

/// What [`AdditiveAttention::step_backward`] needs from one step. The `[U, B, A]` tanh
/// values are not kept: backward computes them again from the keys and `q`, which
/// costs less than writing them out at every step and reading them back (half a
/// megabyte a step for a reference-size batch part, streamed through the cache the
/// decoder's weights live in).
#[derive(Debug, Clone)]
pub struct AttentionCache {
    /// Decoder state `[B, S]`.
    s: Array2<f32>,
    /// Its query `W_s s` `[B, A]`.
    q: Array2<f32>,
    /// Attention weights `[B, U]`.
    alpha: Array2<f32>,
    /// With location awareness: the previous weights `[B, U]` and the filter
    /// outputs `f` `[B, U, K]`.
    prev: Option<Array2<f32>>,
    f: Option<Array3<f32>>,
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
            location: None,
        }
    }

    /// Location-aware attention with `channels` filters of odd `width` (PyTorch's
    /// initialisation: filters uniform in `±1/sqrt(width)`).
    pub fn new_location(
        listener: usize,
        state: usize,
        attention: usize,
        channels: usize,
        width: usize,
        rng: &mut impl Rng,
    ) -> Self {
        let mut a = Self::new(listener, state, attention, rng);
        a.location = Some(Location {
            conv: crate::init::uniform((channels, width), 1.0 / (width as f32).sqrt(), rng),
            proj: Linear::new(channels, attention, false, rng),
        });
        a
    }

    /// The "previous weights" of the first step: uniform over each sequence's live
    /// positions, `[B, U]`.
    pub fn initial_weights(units: usize, lengths: &[usize]) -> Array2<f32> {
        let mut w = Array2::zeros((lengths.len(), units));
        for (mut row, &l) in w.rows_mut().into_iter().zip(lengths) {
            let l = l.min(units);
            if l > 0 {
                row.slice_mut(s![..l]).fill(1.0 / l as f32);
            }
        }
        w
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

    /// `att_s`'s weight packed for [`AdditiveAttention::step`] and
    /// [`AdditiveAttention::step_backward`].
    /// A decoder step has a few rows (a batch part's utterances, or a beam's).
    pub fn prepare(&self) -> PreparedAttention {
        PreparedAttention {
            query: Recurrence::new(self.att_s.weight.view(), 1),
            query_t: Recurrence::new(self.att_s.weight.t(), 1),
        }
    }

    /// `prepared`, if this layer can use it: the packs leave out a bias, which `att_s`
    /// never has (`new` makes it without). Refuses packs prepared from an attention
    /// layer of another shape.
    fn usable<'a>(
        &self,
        prepared: Option<&'a PreparedAttention>,
    ) -> Result<Option<&'a PreparedAttention>> {
        let Some(p) = prepared.filter(|_| self.att_s.bias.is_none()) else {
            return Ok(None);
        };
        let (a, s) = self.att_s.weight.dim();
        let (n, k) = p.query.dim();
        check_shape(
            "attention",
            "prepared query weights",
            &[n, k],
            &[Some(a), Some(s)],
        )?;
        Ok(Some(p))
    }

    /// One decoder step: listener states `h` `[U, B, D]`, their `keys` `[U, B, A]`,
    /// decoder state `s` `[B, S]`, and (location-aware only) the previous step's
    /// weights `prev` `[B, U]` -> context `[B, D]` and the cache (with the weights).
    /// `prepared` (from this layer's current weights), if given, supplies the packed
    /// query weights; the result is the same up to float rounding. `h` and `keys` are
    /// read as row-major arrays: other layouts (a broadcast) are copied at every call,
    /// so a caller stepping through many steps should pass row-major ones.
    pub fn step(
        &self,
        prepared: Option<&PreparedAttention>,
        h: ArrayView3<f32>,
        keys: ArrayView3<f32>,
        s: ArrayView2<f32>,
        lengths: Option<&[usize]>,
        prev: Option<ArrayView2<f32>>,
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
        let prev = self
            .previous_weights(prev, batch, units)?
            .map(|p| p.to_owned());
        let q = match self.usable(prepared)? {
            Some(p) => {
                let mut q = Array2::zeros((batch, a));
                p.query.acc(q.view_mut(), s);
                q
            }
            None => self.att_s.forward(s)?,
        }; // [B, A]
        let v = self
            .att_v
            .weight
            .as_slice()
            .expect("parameters are row-major");
        // Keys and states come from `keys` and the listener (row-major) or, in tests,
        // broadcasts of them, which are copied.
        let keys = keys.as_standard_layout();
        let ks = keys.as_slice().expect("standard layout");
        let h = h.as_standard_layout();
        let hs = h.as_slice().expect("standard layout");
        let mut alpha = Array2::<f32>::zeros((batch, units));
        let (f, loc) = match &prev {
            Some(p) => {
                let (f, loc) = self.location_term(p.view(), lengths)?;
                (Some(f), Some(loc))
            }
            None => (None, None),
        };
        let zero = vec![0f32; a];
        for b in 0..batch {
            let live = lengths.map_or(units, |l| l[b]);
            let qb = q.row(b);
            let qb = qb.as_slice().expect("fresh arrays are row-major");
            let mut e = alpha.row_mut(b);
            for u in 0..live {
                let loc = match &loc {
                    Some(l) => l.slice(s![b, u, ..]).to_slice().expect("row-major"),
                    None => &zero[..],
                };
                let row = (u * batch + b) * a;
                e[u] = score(&ks[row..row + a], qb, v, loc);
            }
            softmax_live(e, live);
        }
        let ctx = contexts(alpha.view(), d, |b, u| {
            let row = (u * batch + b) * d;
            &hs[row..row + d]
        });
        Ok((
            ctx,
            AttentionCache {
                s: s.to_owned(),
                q,
                alpha,
                prev,
                f,
            },
        ))
    }

    /// The previous step's weights `[B, U]` a step reads: checked when this layer is
    /// location-aware (which needs them), ignored (`None`) when it is not.
    fn previous_weights<'a>(
        &self,
        prev: Option<ArrayView2<'a, f32>>,
        batch: usize,
        units: usize,
    ) -> Result<Option<ArrayView2<'a, f32>>> {
        match (&self.location, prev) {
            (None, _) => Ok(None),
            (Some(_), Some(p)) => {
                check_shape(
                    "attention",
                    "previous weights",
                    p.shape(),
                    &[Some(batch), Some(units)],
                )?;
                Ok(Some(p))
            }
            (Some(_), None) => Err(Error::Lengths {
                layer: "attention".into(),
                reason: "location-aware attention needs the previous step's weights".into(),
            }),
        }
    }

    /// The location term `W_f conv(prev)` of every live position: filter outputs `f`
    /// `[B, U, K]` and their projection `[B, U, A]`, for previous weights `prev`
    /// `[B, U]` (a location-aware layer only; dead positions stay zero).
    fn location_term(
        &self,
        prev: ArrayView2<f32>,
        lengths: Option<&[usize]>,
    ) -> Result<(Array3<f32>, Array3<f32>)> {
        let l = self
            .location
            .as_ref()
            .expect("only location-aware attention has a location term");
        let (batch, units) = prev.dim();
        let k = l.conv.nrows();
        // Filter outputs by direct convolution (K * W per frame), then the projection.
        let mut f = Array3::<f32>::zeros((batch, units, k));
        for b in 0..batch {
            let live = lengths.map_or(units, |l| l[b]);
            for u in 0..live {
                let mut fr = f.slice_mut(s![b, u, ..]);
                location_features(l, prev.row(b), u, fr.as_slice_mut().expect("row-major"));
            }
        }
        let loc = self.location_projection(l, &f)?;
        Ok((f, loc))
    }

    /// The location term's projection of filter outputs `f` `[B, U, K]` -> `[B, U, A]`,
    /// one product for every frame at once; backward repeats it on the cached `f`.
    fn location_projection(&self, l: &Location, f: &Array3<f32>) -> Result<Array3<f32>> {
        let (batch, units, k) = f.dim();
        let flat = f
            .view()
            .into_shape_with_order((batch * units, k))
            .expect("contiguous");
        Ok(l.proj
            .forward(flat)?
            .into_shape_with_order((batch, units, self.att_h.output_dim()))
            .expect("row-major"))
    }

    /// [`AdditiveAttention::step`] for decoding: `n` hypotheses of one utterance attend
    /// over the same listener states `h` `[U, D]` and `keys` `[U, A]` (no copy per
    /// hypothesis), with decoder states `s` `[n, S]` and (location-aware only) previous
    /// weights `prev` `[n, U]`. Returns the contexts `[n, D]` and weights `[n, U]`,
    /// equal to the bit to what `step` gives (without `lengths`) for the same inputs
    /// broadcast over `n`, without the cache `step` keeps for backward.
    pub fn infer_step(
        &self,
        h: ArrayView2<f32>,
        keys: ArrayView2<f32>,
        s: ArrayView2<f32>,
        prev: Option<ArrayView2<f32>>,
    ) -> Result<(Array2<f32>, Array2<f32>)> {
        let (units, d) = h.dim();
        if units == 0 {
            return Err(Error::Lengths {
                layer: "attention".into(),
                reason: "no listener states to attend over".into(),
            });
        }
        let a = self.att_h.output_dim();
        check_shape("attention", "keys", keys.shape(), &[Some(units), Some(a)])?;
        let n = s.nrows();
        check_shape(
            "attention",
            "decoder state",
            s.shape(),
            &[Some(n), Some(self.att_s.input_dim())],
        )?;
        let loc = match self.previous_weights(prev, n, units)? {
            Some(p) => Some(self.location_term(p, None)?.1),
            None => None,
        };
        let q = self.att_s.forward(s)?; // [n, A]
        let v = self
            .att_v
            .weight
            .as_slice()
            .expect("parameters are row-major");
        let keys = keys.as_standard_layout();
        let keys = keys.as_slice().expect("standard layout");
        let zero = vec![0f32; a];
        let mut alpha = Array2::<f32>::zeros((n, units));
        for b in 0..n {
            let qb = q.row(b);
            let qb = qb.as_slice().expect("fresh arrays are row-major");
            let mut e = alpha.row_mut(b);
            let loc_of = |u: usize| match &loc {
                Some(l) => l.slice(s![b, u, ..]).to_slice().expect("row-major"),
                None => &zero[..],
            };
            // Two positions at a time: two independent accumulator chains overlap,
            // where one chain alone left the AVX-512 build waiting on its latency; each
            // score is computed exactly as `score` computes it.
            let mut u = 0;
            while u + 1 < units {
                let (k0, k1) = (&keys[u * a..(u + 1) * a], &keys[(u + 1) * a..(u + 2) * a]);
                let (s0, s1) = score_pair(k0, k1, qb, v, loc_of(u), loc_of(u + 1));
                e[u] = s0;
                e[u + 1] = s1;
                u += 2;
            }
            if u < units {
                e[u] = score(&keys[u * a..(u + 1) * a], qb, v, loc_of(u));
            }
            softmax_live(e, units);
        }
        let h = h.as_standard_layout();
        let hs = h.as_slice().expect("standard layout");
        let ctx = contexts(alpha.view(), d, |_, u| &hs[u * d..(u + 1) * d]);
        Ok((ctx, alpha))
    }

    /// Gradients of one step for `d_ctx` `[B, D]` and (location-aware) `d_alpha`
    /// `[B, U]`, the gradient reaching this step's weights from the next step: adds
    /// into `grads` and into `dkeys` `[U, B, A]` (accumulated over steps by the
    /// caller, then passed to [`AdditiveAttention::keys_backward`]), and returns
    /// `dL/ds` `[B, S]` and (location-aware) `dL/dprev` `[B, U]`. `h` `[U, B, D]` and
    /// `keys` `[U, B, A]` are the ones the step read.
    ///
    /// The context's own path into `h` (`alpha`-weighted `d_ctx`) is left to
    /// [`AdditiveAttention::contexts_backward`], for all steps at once: one product
    /// per sequence instead of a pass over `dh` at every step.
    ///
    /// `prepared` (from this layer's current weights), if given, supplies the packed
    /// query weights for `dL/ds`. As in [`AdditiveAttention::step`], `h` and `keys`
    /// of another layout than row-major are copied at every call.
    #[allow(clippy::too_many_arguments)]
    pub fn step_backward(
        &self,
        prepared: Option<&PreparedAttention>,
        cache: &AttentionCache,
        h: ArrayView3<f32>,
        keys: ArrayView3<f32>,
        d_ctx: ArrayView2<f32>,
        d_alpha: Option<ArrayView2<f32>>,
        mut dkeys: ArrayViewMut3<f32>,
        grads: &mut AdditiveAttention,
    ) -> Result<(Array2<f32>, Option<Array2<f32>>)> {
        let (units, batch, d) = h.dim();
        let a = self.att_h.output_dim();
        check_shape(
            "attention",
            "context gradient",
            d_ctx.shape(),
            &[Some(batch), Some(d)],
        )?;
        for (name, shape) in [("keys", keys.shape()), ("dkeys", dkeys.shape())] {
            check_shape(
                "attention",
                name,
                shape,
                &[Some(units), Some(batch), Some(a)],
            )?;
        }
        check_shape(
            "attention",
            "cached weights",
            cache.alpha.shape(),
            &[Some(batch), Some(units)],
        )?;
        check_shape(
            "attention",
            "cached query",
            cache.q.shape(),
            &[Some(batch), Some(a)],
        )?;
        if let Some(da) = &d_alpha {
            check_shape(
                "attention",
                "weight gradient",
                da.shape(),
                &[Some(batch), Some(units)],
            )?;
        }
        let v = self
            .att_v
            .weight
            .as_slice()
            .expect("parameters are row-major");
        let h = h.as_standard_layout();
        let hs = h.as_slice().expect("standard layout");
        let keys = keys.as_standard_layout();
        let ks = keys.as_slice().expect("standard layout");
        let d_ctx = d_ctx.as_standard_layout();
        if let (Some(l), Some(f)) = (&self.location, &cache.f) {
            check_shape(
                "attention",
                "cached filter outputs",
                f.shape(),
                &[Some(batch), Some(units), Some(l.conv.nrows())],
            )?;
        }
        // The location term as the step computed it: the same product of the same
        // cached filter outputs.
        let loc = match (&self.location, &cache.f) {
            (Some(l), Some(f)) => Some(self.location_projection(l, f)?),
            _ => None,
        };
        // A caller's strided `dkeys` gets this step's share through a row-major copy.
        let mut dk_copy = (!dkeys.is_standard_layout()).then(|| Array3::zeros(dkeys.raw_dim()));
        let dk = match &mut dk_copy {
            Some(c) => c.as_slice_mut(),
            None => dkeys.as_slice_mut(),
        }
        .expect("standard layout");
        let mut dq = Array2::<f32>::zeros((batch, a));
        let mut dv = vec![0f32; a];
        // Gradient of the pre-tanh sum at every live frame, for the location term's
        // products after the loop.
        let mut dz_all = cache
            .f
            .as_ref()
            .map(|_| Array3::<f32>::zeros((batch, units, a)));
        let zero = vec![0f32; a];
        let mut dz = vec![0f32; a];
        let mut dalpha = vec![0f32; units];
        for b in 0..batch {
            let dc = d_ctx.row(b);
            let dc = dc.as_slice().expect("standard layout");
            let w = cache.alpha.row(b);
            // d alpha[u] = d_ctx . h[u].
            for (u, da) in dalpha.iter_mut().enumerate() {
                *da = 0.0;
                if w[u] == 0.0 {
                    continue;
                }
                let row = (u * batch + b) * d;
                *da = dot(dc, &hs[row..row + d]);
                if let Some(din) = &d_alpha {
                    *da += din[(b, u)];
                }
            }
            // Softmax backward: de = alpha * (dalpha - sum(alpha * dalpha)).
            let mean: f32 = (0..units).map(|u| w[u] * dalpha[u]).sum();
            let qb = cache.q.row(b);
            let qb = qb.as_slice().expect("fresh arrays are row-major");
            let mut dqb = dq.row_mut(b);
            let dqb = dqb.as_slice_mut().expect("fresh arrays are row-major");
            for (u, &da) in dalpha.iter().enumerate() {
                if w[u] == 0.0 {
                    continue;
                }
                let de = w[u] * (da - mean);
                let loc = match &loc {
                    Some(l) => l.slice(s![b, u, ..]).to_slice().expect("row-major"),
                    None => &zero[..],
                };
                let dz = match &mut dz_all {
                    Some(all) => all.slice_mut(s![b, u, ..]).into_slice().expect("row-major"),
                    None => &mut dz[..],
                };
                let row = (u * batch + b) * a;
                score_backward(
                    &ks[row..row + a],
                    qb,
                    v,
                    loc,
                    de,
                    &mut dv,
                    dqb,
                    &mut dk[row..row + a],
                    dz,
                );
            }
        }
        if let Some(c) = dk_copy {
            dkeys += &c;
        }
        let dprev = match (
            &self.location,
            &mut grads.location,
            &cache.f,
            &cache.prev,
            dz_all,
        ) {
            (Some(l), Some(gl), Some(f), Some(p), Some(dz_all)) => {
                let k = l.conv.nrows();
                let f = f
                    .view()
                    .into_shape_with_order((batch * units, k))
                    .expect("contiguous");
                let dz = dz_all
                    .into_shape_with_order((batch * units, a))
                    .expect("row-major");
                // dP += dz^T f, df = dz P: two products over every frame.
                let df = l.proj.backward(f, dz.view(), &mut gl.proj)?;
                let df = df
                    .into_shape_with_order((batch, units, k))
                    .expect("row-major");
                let mut dprev = Array2::<f32>::zeros((batch, units));
                for b in 0..batch {
                    for u in 0..units {
                        location_backward(
                            l,
                            gl,
                            df.slice(s![b, u, ..]),
                            p.row(b),
                            dprev.row_mut(b),
                            u,
                        );
                    }
                }
                Some(dprev)
            }
            _ => None,
        };
        let mut gv = grads.att_v.weight.row_mut(0);
        gv.iter_mut().zip(&dv).for_each(|(g, &d)| *g += d);
        let ds = match self.usable(prepared)? {
            Some(p) => {
                matmul(grads.att_s.weight.view_mut(), dq.t(), cache.s.view(), true);
                let mut ds = Array2::zeros(cache.s.raw_dim());
                p.query_t.acc(ds.view_mut(), dq.view());
                ds
            }
            None => self
                .att_s
                .backward(cache.s.view(), dq.view(), &mut grads.att_s)?,
        };
        Ok((ds, dprev))
    }

    /// The contexts' path into the listener states, for all `L` steps at once:
    /// `dh[u, b] += sum_t alpha_t[b, u] d_ctx[t, b]`, for the steps' weights `alphas`
    /// (`[B, U]` each, [`AttentionCache::alpha`]) and their context gradients `d_ctx`
    /// `[L, B, D]`, into `dh` `[U, B, D]`. The rest of `dL/dh` comes from
    /// [`AdditiveAttention::keys_backward`].
    pub fn contexts_backward(
        &self,
        alphas: &[ArrayView2<f32>],
        d_ctx: ArrayView3<f32>,
        mut dh: ArrayViewMut3<f32>,
    ) -> Result<()> {
        let (units, batch, d) = dh.dim();
        let steps = alphas.len();
        check_shape(
            "attention",
            "context gradients",
            d_ctx.shape(),
            &[Some(steps), Some(batch), Some(d)],
        )?;
        for alpha in alphas {
            check_shape(
                "attention",
                "weights",
                alpha.shape(),
                &[Some(batch), Some(units)],
            )?;
        }
        // One sequence's weights over the steps, `[L, U]`, reused across sequences.
        let mut w = Array2::<f32>::zeros((steps, units));
        for b in 0..batch {
            for (mut row, alpha) in w.rows_mut().into_iter().zip(alphas) {
                row.assign(&alpha.row(b));
            }
            matmul(
                dh.slice_mut(s![.., b, ..]),
                w.t(),
                d_ctx.slice(s![.., b, ..]),
                true,
            );
        }
        Ok(())
    }
}

/// `f[k] = sum_j conv[k, j] prev[u + j - r]` for one position `u`, `r = (W - 1) / 2`,
/// positions outside `prev` read as 0.
fn location_features(l: &Location, prev: ArrayView1<f32>, u: usize, out: &mut [f32]) {
    let (w, units) = (l.conv.ncols(), prev.len());
    let r = w / 2;
    // Filter taps j with 0 <= u + j - r < units.
    let j0 = r.saturating_sub(u);
    let j1 = w.min(units + r - u);
    for (k, o) in out.iter_mut().enumerate() {
        let c = l.conv.row(k);
        let mut acc = 0f32;
        for j in j0..j1 {
            acc += c[j] * prev[u + j - r];
        }
        *o = acc;
    }
}

/// Backward of the convolution at one position `u`, given `df` `[K]`: adds into the
/// filters' gradient and into `dprev`.
fn location_backward(
    l: &Location,
    g: &mut Location,
    df: ArrayView1<f32>,
    prev: ArrayView1<f32>,
    mut dprev: ndarray::ArrayViewMut1<f32>,
    u: usize,
) {
    let (w, units) = (l.conv.ncols(), prev.len());
    let r = w / 2;
    let (j0, j1) = (r.saturating_sub(u), w.min(units + r - u));
    for (k, &df) in df.iter().enumerate() {
        if df == 0.0 {
            continue;
        }
        let c = l.conv.row(k);
        let mut gc = g.conv.row_mut(k);
        for j in j0..j1 {
            gc[j] += df * prev[u + j - r];
            dprev[u + j - r] += df * c[j];
        }
    }
}

impl Module for AdditiveAttention {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.att_h.visit(&join(prefix, "att_h"), f);
        self.att_s.visit(&join(prefix, "att_s"), f);
        self.att_v.visit(&join(prefix, "att_v"), f);
        if let Some(l) = &self.location {
            f(join(prefix, "att_conv.weight"), l.conv.view().into_dyn());
            l.proj.visit(&join(prefix, "att_loc"), f);
        }
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.att_h.visit_mut(&join(prefix, "att_h"), f);
        self.att_s.visit_mut(&join(prefix, "att_s"), f);
        self.att_v.visit_mut(&join(prefix, "att_v"), f);
        if let Some(l) = &mut self.location {
            f(
                join(prefix, "att_conv.weight"),
                l.conv.view_mut().into_dyn(),
            );
            l.proj.visit_mut(&join(prefix, "att_loc"), f);
        }
    }

    fn zeros_like(&self) -> Self {
        AdditiveAttention {
            att_h: self.att_h.zeros_like(),
            att_s: self.att_s.zeros_like(),
            att_v: self.att_v.zeros_like(),
            location: self.location.as_ref().map(|l| Location {
                conv: Array2::zeros(l.conv.raw_dim()),
                proj: l.proj.zeros_like(),
            }),
        }
    }
}

/// Softmax over the first `live` entries of `e` in place; the rest stay as they are
/// (zero: dead positions get no weight).
fn softmax_live(mut e: ndarray::ArrayViewMut1<f32>, live: usize) {
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

/// Defines `fn $name` that runs `$body` compiled for AVX2 and FMA when the CPU has
/// them, and for the build's baseline otherwise: these loops run at every listener
/// frame of every decoder step, and the baseline (SSE2) build runs them at half
/// width (and makes each `mul_add` a library call, so only `score` uses it, as it
/// did before this macro).
macro_rules! with_avx2 {
    ($($item:tt)*) => {
        with_simd! { false; $($item)* }
    };
}

/// [`with_avx2`] with an AVX-512 build tried first: for loops that keep two 16-lane
/// chains in flight, whose latency one chain of 16 lanes would expose.
macro_rules! with_avx512 {
    ($($item:tt)*) => {
        with_simd! { true; $($item)* }
    };
}

/// The dispatch behind [`with_avx2`] and [`with_avx512`]: `$wide` says whether the
/// AVX-512 build is tried.
macro_rules! with_simd {
    ($wide:literal; $(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                imp($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                imp($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            const WIDE: bool = $wide;
            #[cfg(target_arch = "x86_64")]
            if WIDE && crate::simd::avx512() {
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA.
                return unsafe { avx512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if crate::simd::avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { avx2($($arg),*) };
            }
            imp($($arg),*)
        }
    };
}

/// The contexts `[n, D]` of weights `alpha` `[n, U]` over the states `row(b, u)` (`[D]`
/// each): `sum_u alpha[b, u] row(b, u)`, skipping dead positions.
fn contexts<'h>(
    alpha: ArrayView2<f32>,
    d: usize,
    row: impl Fn(usize, usize) -> &'h [f32],
) -> Array2<f32> {
    let mut ctx = Array2::<f32>::zeros((alpha.nrows(), d));
    for (b, (mut cr, w)) in ctx.rows_mut().into_iter().zip(alpha.rows()).enumerate() {
        let cr = cr.as_slice_mut().expect("fresh arrays are row-major");
        for (u, &w) in w.iter().enumerate() {
            if w != 0.0 {
                add_scaled(cr, w, row(b, u));
            }
        }
    }
    ctx
}

with_avx2! {
    /// `y += w x`.
    fn add_scaled(y: &mut [f32], w: f32, x: &[f32]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y += w * x);
    }
}

with_avx2! {
    /// `x . y`, in sixteen partial sums so that the loop vectorises.
    fn dot(x: &[f32], y: &[f32]) -> f32 {
        const L: usize = 16;
        let n = x.len().min(y.len());
        let (x, y) = (&x[..n], &y[..n]);
        let mut acc = [0f32; L];
        let (mut xc, mut yc) = (x.chunks_exact(L), y.chunks_exact(L));
        for (x, y) in (&mut xc).zip(&mut yc) {
            for l in 0..L {
                acc[l] += x[l] * y[l];
            }
        }
        let mut sum: f32 = acc.iter().sum();
        for (x, y) in xc.remainder().iter().zip(yc.remainder()) {
            sum += x * y;
        }
        sum
    }
}

with_avx2! {
    /// One position's score: `v . tanh(k + q + loc)` (all `[A]`). Sixteen partial
    /// sums, so the loop vectorises (and the AVX2 build's `tanh` with it); the decoder
    /// runs this for every listener frame at every step. (An AVX-512 build ran 16
    /// lanes wide but slower: 100 against 94 ms for the reference greedy decode, its
    /// one 16-lane `tanh` chain exposing latency the AVX2 build's two 8-lane chains
    /// hide.)
    fn score(k: &[f32], q: &[f32], v: &[f32], loc: &[f32]) -> f32 {
        const L: usize = 16;
        let n = k.len();
        let (q, v, loc) = (&q[..n], &v[..n], &loc[..n]);
        let mut acc = [0f32; L];
        // Fixed-size chunks: with indices into slices the bounds checks kept the loop
        // scalar.
        let (mut kc, mut qc) = (k.chunks_exact(L), q.chunks_exact(L));
        let (mut vc, mut lc) = (v.chunks_exact(L), loc.chunks_exact(L));
        for (((k, q), v), loc) in (&mut kc).zip(&mut qc).zip(&mut vc).zip(&mut lc) {
            for l in 0..L {
                let y = crate::activation::tanh(k[l] + q[l] + loc[l]);
                acc[l] = v[l].mul_add(y, acc[l]);
            }
        }
        let mut dot: f32 = acc.iter().sum();
        let rest = (kc.remainder().iter().zip(qc.remainder()))
            .zip(vc.remainder().iter().zip(lc.remainder()));
        for ((k, q), (v, loc)) in rest {
            let y = crate::activation::tanh(k + q + loc);
            dot = v.mul_add(y, dot);
        }
        dot
    }
}

with_avx512! {
    /// [`score`] of two positions `k0`, `k1` (with their `loc0`, `loc1`) against the
    /// same `q` and `v`: each the same operations in the same order as `score`, so the
    /// same bits, in two independent chains; 16 lanes wide on AVX-512.
    fn score_pair(
        k0: &[f32],
        k1: &[f32],
        q: &[f32],
        v: &[f32],
        loc0: &[f32],
        loc1: &[f32],
    ) -> (f32, f32) {
        const L: usize = 16;
        let n = k0.len();
        let (k1, q, v, loc0, loc1) = (&k1[..n], &q[..n], &v[..n], &loc0[..n], &loc1[..n]);
        let (mut acc0, mut acc1) = ([0f32; L], [0f32; L]);
        let whole = n - n % L;
        for i in (0..whole).step_by(L) {
            let k0: &[f32; L] = k0[i..i + L].try_into().expect("block of L");
            let k1: &[f32; L] = k1[i..i + L].try_into().expect("block of L");
            let q: &[f32; L] = q[i..i + L].try_into().expect("block of L");
            let v: &[f32; L] = v[i..i + L].try_into().expect("block of L");
            let l0: &[f32; L] = loc0[i..i + L].try_into().expect("block of L");
            let l1: &[f32; L] = loc1[i..i + L].try_into().expect("block of L");
            for l in 0..L {
                let y0 = crate::activation::tanh(k0[l] + q[l] + l0[l]);
                let y1 = crate::activation::tanh(k1[l] + q[l] + l1[l]);
                acc0[l] = v[l].mul_add(y0, acc0[l]);
                acc1[l] = v[l].mul_add(y1, acc1[l]);
            }
        }
        let mut dot0: f32 = acc0.iter().sum();
        let mut dot1: f32 = acc1.iter().sum();
        for i in whole..n {
            let y0 = crate::activation::tanh(k0[i] + q[i] + loc0[i]);
            let y1 = crate::activation::tanh(k1[i] + q[i] + loc1[i]);
            dot0 = v[i].mul_add(y0, dot0);
            dot1 = v[i].mul_add(y1, dot1);
        }
        (dot0, dot1)
    }
}

with_avx2! {
    /// The backward of one position's [`score`] for the score's gradient `de`: with
    /// `t = tanh(k + q + loc)` computed again (the same bits as the step's),
    /// `dv += de t` and `dz = de v (1 - t^2)`, added into `dq` and `dk` and written to
    /// `dz` (all `[A]`). One pass, where a cached `t` cost a read from memory.
    fn score_backward(
        k: &[f32],
        q: &[f32],
        v: &[f32],
        loc: &[f32],
        de: f32,
        dv: &mut [f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dz: &mut [f32],
    ) {
        let n = k.len();
        let (q, v, loc) = (&q[..n], &v[..n], &loc[..n]);
        let (dv, dq, dk, dz) = (&mut dv[..n], &mut dq[..n], &mut dk[..n], &mut dz[..n]);
        let inputs = k.iter().zip(q).zip(v.iter().zip(loc));
        let outputs = dv.iter_mut().zip(dq.iter_mut()).zip(dk.iter_mut().zip(dz.iter_mut()));
        for (((k, q), (v, loc)), ((dv, dq), (dk, dz))) in inputs.zip(outputs) {
            let t = crate::activation::tanh(k + q + loc);
            *dv += de * t;
            let z = de * v * (1.0 - t * t);
            *dz = z;
            *dq += z;
            *dk += z;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Packs from an attention layer of another shape are refused by both passes,
    /// not read out of bounds.
    #[test]
    fn packs_of_another_shape_are_refused() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let att = AdditiveAttention::new(6, 5, 4, &mut rng);
        let other = AdditiveAttention::new(6, 7, 4, &mut rng).prepare();
        let h = crate::init::uniform((3, 2, 6), 1.0, &mut rng);
        let keys = att.keys(h.view()).unwrap();
        let s = crate::init::uniform((2, 5), 1.0, &mut rng);
        let err = att
            .step(Some(&other), h.view(), keys.view(), s.view(), None, None)
            .unwrap_err();
        assert!(err.to_string().contains("prepared"), "{err}");
        let (_, cache) = att
            .step(None, h.view(), keys.view(), s.view(), None, None)
            .unwrap();
        let mut grads = att.zeros_like();
        let mut dk = Array3::zeros(keys.raw_dim());
        let err = att
            .step_backward(
                Some(&other),
                &cache,
                h.view(),
                keys.view(),
                Array2::zeros((2, 6)).view(),
                None,
                dk.view_mut(),
                &mut grads,
            )
            .unwrap_err();
        assert!(err.to_string().contains("prepared"), "{err}");
    }
}
