//! Listen, Attend and Spell (Chan et al., 2016), as the PyTorch reference builds it:
//!
//! - listener: BiLSTM over features, then `pyramid_layers` x [join frame pairs ->
//!   BiLSTM]; output `[U, B, 2H]` with `U = T / 2^pyramid_layers`. Beyond the
//!   reference, the features may be joined `frame_stack` at a time before the first
//!   layer (a low-frame-rate input), and `top_layers` more BiLSTMs may follow the
//!   pyramid at its rate: `U = T / (frame_stack 2^pyramid_layers)`;
//! - speller, per output step: `LSTMCell0([embed(y_prev); context_prev])`,
//!   `LSTMCell1`, additive attention queried by cell 1's output, and
//!   `logits = Linear([s; context])`.
//!
//! The config's `cell` swaps every LSTM (listener layers and both speller cells) for a
//! GRU or an Elman RNN ([`crate::cells`]); LSTM is the reference and the default.
//!
//! Training is teacher-forced: the decoder reads `<sos> y_1 .. y_n` and is scored on
//! `y_1 .. y_n <eos>`; the loss is the mean cross-entropy per scored token. With
//! `ctc_weight = w > 0`, a linear CTC head on the listener states (`ctc.weight`,
//! `ctc.bias`) adds `w * CTC loss per character` to `(1 - w) *` that (joint
//! CTC-attention, Kim et al. 2017): CTC's monotonic alignments teach the listener
//! where each character is, which attention trained from scratch on a few hours of
//! speech otherwise may never find. Everything
//! is time-major. Parameter names match the reference's `state_dict()`.

use std::sync::Arc;

use ndarray::{
    concatenate, s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMutD, Axis,
};
use rand::Rng;

use lasr_nn::module::join;
use lasr_nn::{
    ctc_loss, pyramid_lengths, pyramid_reduce, pyramid_reduce_backward,
    softmax_cross_entropy_smoothed, stack_frames, stack_frames_backward, stacked_lengths,
    AdditiveAttention, AttentionCache, Dropout, Embedding, Linear, Module, PackedRecurrent,
    PreparedAttention, Team, TeamMember, WeightFormat,
};

use crate::cells::{
    ListenerLayer, ListenerLayerCache, PreparedCell, SpellerCell, SpellerCellCache,
};
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// A batch of utterances, time-major.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Features `[T, B, F]`, anything beyond each utterance's length is ignored.
    pub feats: Array3<f32>,
    /// Frames of each utterance `[B]`.
    pub lengths: Vec<usize>,
    /// Token ids of each transcript, without `<sos>`/`<eos>`.
    pub targets: Vec<Vec<usize>>,
    /// One seed per utterance for the training-time noise the config asks for
    /// (dropout masks, scheduled-sampling draws); `None` runs without noise, as
    /// validation does. Per utterance, so a batch split over threads draws the same.
    pub seeds: Option<Vec<u64>>,
}

impl Batch {
    /// Utterances `range` as a batch of their own, cut to the longest of them.
    pub fn part(&self, range: std::ops::Range<usize>) -> Batch {
        let lengths = self.lengths[range.clone()].to_vec();
        let steps = lengths.iter().copied().max().unwrap_or(0);
        Batch {
            feats: self.feats.slice(s![..steps, range.clone(), ..]).to_owned(),
            lengths,
            targets: self.targets[range.clone()].to_vec(),
            seeds: self.seeds.as_ref().map(|s| s[range].to_vec()),
        }
    }
}

/// Training-time noise for one forward pass: per-utterance seeds `[B]` and the rates.
#[derive(Debug, Clone, Copy)]
pub struct Noise<'a> {
    pub seeds: &'a [u64],
    /// Dropout on every listener layer's output and on the speller's output-layer
    /// input.
    pub dropout: f32,
    /// Scheduled sampling: the chance that a decoder step is fed the model's own best
    /// guess from the step before instead of the true previous character.
    pub sampling_rate: f32,
}

/// A batch's training noise (its seeds and `config`'s rates), if it has seeds.
fn noise<'a>(batch: &'a Batch, config: &ModelConfig) -> Option<Noise<'a>> {
    batch.seeds.as_deref().map(|seeds| Noise {
        seeds,
        dropout: config.dropout,
        sampling_rate: config.sampling_rate,
    })
}

/// A batch after the listener: states `h` `[U, B, D]`, their live lengths `[B]`, and
/// the listener's cache.
struct Listened {
    h: Array3<f32>,
    lengths: Vec<usize>,
    cache: ListenerCache,
}

/// Mask sites: each draws its own stream of [`lasr_nn::dropout::uniform`] values.
const SITE_SPELLER_OUT: u64 = 100;
const SITE_SAMPLING: u64 = 200;

/// The encoder: a bidirectional layer, then pyramid bidirectional layers (LSTM, GRU or
/// RNN as the config's `cell` says), then any top layers at the pyramid's rate. The
/// first layer reads `stack` feature frames joined into one.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Feature frames joined into each of the first layer's input frames (1: none).
    pub stack: usize,
    pub l0: ListenerLayer,
    pub pyr: Vec<ListenerLayer>,
    pub top: Vec<ListenerLayer>,
}

/// What [`Listener::backward`] needs.
#[derive(Debug, Clone)]
pub struct ListenerCache {
    /// Feature frames before the first layer's stacking.
    steps: usize,
    l0: ListenerLayerCache,
    /// Frames before each reduction, and each pyramid layer's cache.
    pyr: Vec<(usize, ListenerLayerCache)>,
    /// Each top layer's cache, bottom first.
    top: Vec<ListenerLayerCache>,
    /// Dropout masks on each layer's output, first layer first (empty without noise).
    masks: Vec<Array3<f32>>,
}

impl Listener {
    pub(crate) fn new(c: &ModelConfig, rng: &mut impl Rng) -> Self {
        let h = c.listener_hidden;
        Listener {
            stack: c.frame_stack,
            l0: ListenerLayer::new(c.cell, c.frame_stack * c.input_dim, h, rng),
            pyr: (0..c.pyramid_layers)
                .map(|_| ListenerLayer::new(c.cell, 4 * h, h, rng))
                .collect(),
            top: (0..c.top_layers)
                .map(|_| ListenerLayer::new(c.cell, 2 * h, h, rng))
                .collect(),
        }
    }

    /// `x` `[T, B, F]`, `lengths` `[B]` -> states `[U, B, 2H]`, their lengths, cache.
    /// With `noise`, each layer's output is dropped out.
    pub fn forward(
        &self,
        x: ArrayView3<f32>,
        lengths: &[usize],
        noise: Option<Noise>,
    ) -> Result<(Array3<f32>, Vec<usize>, ListenerCache)> {
        let drop = noise.filter(|n| n.dropout > 0.0);
        let mut masks = Vec::new();
        let mut dropout = |h: &mut Array3<f32>| {
            if let Some(n) = drop {
                // One site per listener layer; `validate`'s caps on the layer counts
                // keep them below the speller's sites.
                let site = masks.len() as u64;
                debug_assert!(site < SITE_SPELLER_OUT);
                let mask = Dropout { p: n.dropout }.mask(h.dim(), n.seeds, site);
                *h *= &mask;
                masks.push(mask);
            }
        };
        let steps = x.dim().0;
        let mut lengths = stacked_lengths(lengths, self.stack);
        let (mut h, l0) = self
            .l0
            .forward(stack_frames(x, self.stack).view(), Some(&lengths))?;
        dropout(&mut h);
        let mut pyr = Vec::with_capacity(self.pyr.len());
        for layer in &self.pyr {
            let steps = h.dim().0;
            let joined = pyramid_reduce(h.view());
            lengths = pyramid_lengths(&lengths);
            let (mut y, cache) = layer.forward(joined.view(), Some(&lengths))?;
            dropout(&mut y);
            pyr.push((steps, cache));
            h = y;
        }
        let mut top = Vec::with_capacity(self.top.len());
        for layer in &self.top {
            let (mut y, cache) = layer.forward(h.view(), Some(&lengths))?;
            dropout(&mut y);
            top.push(cache);
            h = y;
        }
        let cache = ListenerCache {
            steps,
            l0,
            pyr,
            top,
            masks,
        };
        Ok((h, lengths, cache))
    }

    /// Inference over one utterance: `x` `[T, F]` -> states `[U, 2H]` (no caches;
    /// equal to [`Listener::forward`] up to float summation order).
    pub fn infer(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.infer_packed(x, &self.pack(WeightFormat::F32))
    }

    /// Every layer's weights packed for [`Listener::infer_packed`], bottom first.
    pub fn pack(&self, format: WeightFormat) -> Vec<[PackedRecurrent; 2]> {
        self.layers().map(|l| l.pack(format)).collect()
    }

    /// [`Listener::infer`] reusing `w`, this listener's [`Listener::pack`].
    pub fn infer_packed(
        &self,
        x: ArrayView2<f32>,
        w: &[[PackedRecurrent; 2]],
    ) -> Result<Array2<f32>> {
        let layers = self.layers().count();
        if w.len() != layers {
            return Err(Error::Config(format!(
                "packed weights for {} listener layers given to a listener of {layers}",
                w.len(),
            )));
        }
        let stacked = stack_frames(x.insert_axis(Axis(1)), self.stack);
        let mut h = self
            .l0
            .infer_packed(stacked.index_axis(Axis(1), 0), &w[0])?;
        for (layer, w) in self.pyr.iter().zip(&w[1..]) {
            let joined = pyramid_reduce(h.view().insert_axis(Axis(1)));
            h = layer.infer_packed(joined.index_axis(Axis(1), 0), w)?;
        }
        for (layer, w) in self.top.iter().zip(&w[1 + self.pyr.len()..]) {
            h = layer.infer_packed(h.view(), w)?;
        }
        Ok(h)
    }

    /// `dy` `[U, B, 2H]` -> `dx` `[T, B, F]` if `input_grad` (training has no use for
    /// the features' gradient, which costs the first layer a product over all
    /// frames), gradients added into `grads`.
    pub fn backward(
        &self,
        cache: &ListenerCache,
        dy: ArrayView3<f32>,
        grads: &mut Listener,
        input_grad: bool,
    ) -> Result<Option<Array3<f32>>> {
        let mut d = dy.to_owned();
        let mut masks = cache.masks.iter().rev();
        for ((layer, c), g) in self.top.iter().zip(&cache.top).zip(&mut grads.top).rev() {
            if let Some(m) = masks.next() {
                d *= m;
            }
            d = layer
                .backward(c, d.view(), g, true)?
                .expect("the input gradient was asked for");
        }
        for ((layer, (steps, c)), g) in self.pyr.iter().zip(&cache.pyr).zip(&mut grads.pyr).rev() {
            if let Some(m) = masks.next() {
                d *= m;
            }
            let dj = layer
                .backward(c, d.view(), g, true)?
                .expect("the input gradient was asked for");
            d = pyramid_reduce_backward(dj.view(), *steps);
        }
        if let Some(m) = masks.next() {
            d *= m;
        }
        let dx = self
            .l0
            .backward(&cache.l0, d.view(), &mut grads.l0, input_grad)?;
        Ok(dx.map(|dx| stack_frames_backward(dx.view(), cache.steps, self.stack)))
    }

    /// Every recurrent layer, bottom first.
    pub fn layers(&self) -> impl Iterator<Item = &ListenerLayer> {
        std::iter::once(&self.l0).chain(&self.pyr).chain(&self.top)
    }
}

impl Module for Listener {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.l0.visit(&join(prefix, "l0"), f);
        for (i, l) in self.pyr.iter().enumerate() {
            l.visit(&join(prefix, &format!("pyr.{i}")), f);
        }
        for (i, l) in self.top.iter().enumerate() {
            l.visit(&join(prefix, &format!("top.{i}")), f);
        }
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.l0.visit_mut(&join(prefix, "l0"), f);
        for (i, l) in self.pyr.iter_mut().enumerate() {
            l.visit_mut(&join(prefix, &format!("pyr.{i}")), f);
        }
        for (i, l) in self.top.iter_mut().enumerate() {
            l.visit_mut(&join(prefix, &format!("top.{i}")), f);
        }
    }

    fn zeros_like(&self) -> Self {
        Listener {
            stack: self.stack,
            l0: self.l0.zeros_like(),
            pyr: self.pyr.iter().map(Module::zeros_like).collect(),
            top: self.top.iter().map(Module::zeros_like).collect(),
        }
    }
}

/// The attending decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Speller {
    pub emb: Embedding,
    pub cell0: SpellerCell,
    pub cell1: SpellerCell,
    pub attention: AdditiveAttention,
    pub out: Linear,
}

/// One decoder step's caches.
#[derive(Debug, Clone)]
struct StepCache {
    cell0: SpellerCellCache,
    cell1: SpellerCellCache,
    attention: AttentionCache,
    /// The output layer's input's dropout mask `[B, S + D]`, with noise.
    mask: Option<Array2<f32>>,
}

/// What [`Speller::backward`] needs.
#[derive(Debug, Clone)]
pub struct SpellerCache {
    keys: Array3<f32>,
    /// Decoder input tokens, `[L][B]`.
    inputs: Vec<Vec<usize>>,
    steps: Vec<StepCache>,
    /// Every step's `[s; context]` `[L, B, S + D]`, the output layer's input (after
    /// dropout).
    out_in: Array3<f32>,
    /// The forward pass's prepared weights, which backward's per-step products read
    /// too (shared by a batch's parts).
    prepared: Arc<PreparedSpeller>,
}

/// The speller's weights packed for a batch's decoder steps: both cells' (see
/// [`SpellerCell::prepare`]) and the attention's query weights.
#[derive(Debug)]
pub(crate) struct PreparedSpeller {
    cells: [PreparedCell; 2],
    attention: PreparedAttention,
    /// With an LSTM speller, each character's contribution to cell 0's gates,
    /// `emb W_ih[:, ..E]^T` `[V, 4H]`, looked up like an embedding: the embedding
    /// columns of cell 0's input then take no part in the step's products, whose
    /// weights stream from L3 at every step (forward and backward). Cell 0 is
    /// prepared for those given columns ([`SpellerCell::prepare_given`]).
    table: Option<Embedding>,
}

impl SpellerCache {
    /// Attention weights of every step, `[L, B, U]` (for alignment plots).
    pub fn attention(&self) -> Array3<f32> {
        let views: Vec<_> = self
            .steps
            .iter()
            .map(|s| s.attention.alpha().insert_axis(Axis(0)))
            .collect();
        concatenate(Axis(0), &views).expect("every step has the same [B, U]")
    }
}

impl Speller {
    pub(crate) fn new(c: &ModelConfig, rng: &mut impl Rng) -> Self {
        let d = c.listener_dim();
        Speller {
            emb: Embedding::new(c.vocab_size, c.embedding_dim, rng),
            cell0: SpellerCell::new(c.cell, c.embedding_dim + d, c.speller_hidden, rng),
            cell1: SpellerCell::new(c.cell, c.speller_hidden, c.speller_hidden, rng),
            attention: if c.location_channels > 0 {
                AdditiveAttention::new_location(
                    d,
                    c.speller_hidden,
                    c.attention_dim,
                    c.location_channels,
                    c.location_width,
                    rng,
                )
            } else {
                AdditiveAttention::new(d, c.speller_hidden, c.attention_dim, rng)
            },
            out: Linear::new(c.speller_hidden + d, c.vocab_size, true, rng),
        }
    }

    /// Teacher-forced decoding: listener states `h` `[U, B, D]` (live lengths
    /// `lengths`), decoder inputs `inputs` `[L][B]` -> logits `[L, B, V]` and the cache.
    /// With `noise`, the output layer's input is dropped out and, at the sampling
    /// rate, a step is fed the previous step's best guess instead of `inputs`
    /// (the choice passes no gradient, as in Bengio et al. 2015).
    pub fn forward(
        &self,
        h: ArrayView3<f32>,
        lengths: &[usize],
        inputs: &[Vec<usize>],
        noise: Option<Noise>,
    ) -> Result<(Array3<f32>, SpellerCache)> {
        self.forward_in(None, None, h, lengths, inputs, noise)
    }

    /// The weights packed for [`Speller::forward_in`]; they must not change while in
    /// use. The cells pack on separate threads.
    pub(crate) fn prepare(&self) -> Result<PreparedSpeller> {
        let e = self.emb.weight.ncols();
        let ((cell0, table), (cell1, attention)) = rayon::join(
            || {
                let table = self.cell0.given_table(self.emb.weight.view());
                let given = if matches!(table, Ok(Some(_))) { e } else { 0 };
                (self.cell0.prepare_given(given), table)
            },
            || (self.cell1.prepare(), self.attention.prepare()),
        );
        Ok(PreparedSpeller {
            cells: [cell0, cell1],
            attention,
            table: table?.map(|weight| Embedding { weight }),
        })
    }

    /// [`Speller::forward`] with `prepared` (from [`Speller::prepare`], made here if
    /// not given), as a member of `team`, if given: the cells' products share their
    /// weight stream with the other members (the same bits as alone). The member
    /// leaves the team after its last step, so that members with more steps go on
    /// without it.
    pub(crate) fn forward_in(
        &self,
        team: Option<&TeamMember>,
        prepared: Option<Arc<PreparedSpeller>>,
        h: ArrayView3<f32>,
        lengths: &[usize],
        inputs: &[Vec<usize>],
        noise: Option<Noise>,
    ) -> Result<(Array3<f32>, SpellerCache)> {
        let (_, batch, d) = h.dim();
        let vocab = self.out.output_dim();
        // The attention reads `h` row-major at every step: copy a strided one once.
        let h = h.as_standard_layout();
        let h = h.view();
        let keys = self.attention.keys(h)?;
        let prepared = match prepared {
            Some(p) => p,
            None => Arc::new(self.prepare()?),
        };
        let [p0, p1] = &prepared.cells;
        let mut s0 = self.cell0.zero_state(batch);
        let mut s1 = self.cell1.zero_state(batch);
        let mut ctx = Array2::<f32>::zeros((batch, d));
        let sh = self.cell1.hidden();
        let mut out_ins = Array3::<f32>::zeros((inputs.len(), batch, sh + d));
        // Only a step that may feed its guess to the next needs its logits before the
        // next step; otherwise the output layer runs once over all steps, after them.
        let sampling = noise.is_some_and(|n| n.sampling_rate > 0.0);
        let mut logits = Array3::zeros(if sampling {
            (inputs.len(), batch, vocab)
        } else {
            (0, 0, 0)
        });
        let mut steps = Vec::with_capacity(inputs.len());
        let location = self.attention.location.is_some();
        let mut prev = location.then(|| AdditiveAttention::initial_weights(h.dim().0, lengths));
        let mut fed = Vec::with_capacity(inputs.len());
        for (t, tokens) in inputs.iter().enumerate() {
            let mut tokens = tokens.clone();
            if let Some(n) = noise.filter(|n| n.sampling_rate > 0.0 && t > 0) {
                for (b, tok) in tokens.iter_mut().enumerate() {
                    if lasr_nn::dropout::uniform(n.seeds[b], SITE_SAMPLING, t as u64)
                        < n.sampling_rate
                    {
                        *tok = argmax(logits.slice(s![t - 1, b, ..]));
                    }
                }
            }
            let (ns0, cache0) = match &prepared.table {
                Some(table) => {
                    let given = table.forward(&tokens)?;
                    self.cell0
                        .forward_given(team, p0, Some(given.view()), ctx.view(), &s0)?
                }
                None => {
                    let e = self.emb.forward(&tokens)?;
                    let in0 = concatenate(Axis(1), &[e.view(), ctx.view()]).expect("same batch");
                    self.cell0.forward(team, p0, in0.view(), &s0)?
                }
            };
            fed.push(tokens);
            let (ns1, cache1) = self.cell1.forward(team, p1, ns0.h.view(), &s1)?;
            let (nctx, att) = self.attention.step(
                Some(&prepared.attention),
                h,
                keys.view(),
                ns1.h.view(),
                Some(lengths),
                prev.as_ref().map(|p| p.view()),
            )?;
            if location {
                prev = Some(att.alpha().to_owned());
            }
            let mut out_in = out_ins.slice_mut(s![t, .., ..]);
            out_in.slice_mut(s![.., ..sh]).assign(&ns1.h);
            out_in.slice_mut(s![.., sh..]).assign(&nctx);
            let mask = noise.filter(|n| n.dropout > 0.0).map(|n| {
                Dropout { p: n.dropout }.step_mask(out_in.dim(), n.seeds, SITE_SPELLER_OUT, t)
            });
            if let Some(m) = &mask {
                out_in *= m;
            }
            if sampling {
                logits
                    .slice_mut(s![t, .., ..])
                    .assign(&self.out.forward(out_in.view())?);
            }
            steps.push(StepCache {
                cell0: cache0,
                cell1: cache1,
                attention: att,
                mask,
            });
            (s0, s1, ctx) = (ns0, ns1, nctx);
        }
        if let Some(team) = team {
            team.leave();
        }
        if !sampling {
            let rows = inputs.len() * batch;
            let flat = out_ins
                .view()
                .into_shape_with_order((rows, sh + d))
                .expect("row-major");
            logits = self
                .out
                .forward(flat)?
                .into_shape_with_order((inputs.len(), batch, vocab))
                .expect("row-major");
        }
        Ok((
            logits,
            SpellerCache {
                keys,
                inputs: fed,
                steps,
                out_in: out_ins,
                prepared,
            },
        ))
    }

    /// Backpropagation through the decoder: `dlogits` `[L, B, V]` -> `dL/dh`
    /// `[U, B, D]`, parameter gradients added into `grads`. `cache` must come from
    /// [`Speller::forward`] on these very weights (it holds them as packed then).
    pub fn backward(
        &self,
        cache: &SpellerCache,
        h: ArrayView3<f32>,
        dlogits: ArrayView3<f32>,
        grads: &mut Speller,
    ) -> Result<Array3<f32>> {
        self.backward_in(None, cache, h, dlogits, grads)
    }

    /// [`Speller::backward`] as a member of `team`, if given (see
    /// [`Speller::forward_in`]).
    pub(crate) fn backward_in(
        &self,
        team: Option<&TeamMember>,
        cache: &SpellerCache,
        h: ArrayView3<f32>,
        dlogits: ArrayView3<f32>,
        grads: &mut Speller,
    ) -> Result<Array3<f32>> {
        let (_, batch, d) = h.dim();
        let sh = self.cell1.hidden();
        let e = self.emb.weight.ncols();
        // The attention reads `h` row-major at every step: copy a strided one once.
        let h = h.as_standard_layout();
        let h = h.view();
        let mut dh = Array3::<f32>::zeros(h.raw_dim());
        let mut dkeys = Array3::<f32>::zeros(cache.keys.raw_dim());
        // Gradients reaching each cell's state from the steps after it.
        let mut ds0 = self.cell0.zero_state(batch);
        let mut ds1 = self.cell1.zero_state(batch);
        // Gradient reaching this step's context from the next step's cell-0 input.
        let mut dctx_next = Array2::<f32>::zeros((batch, d));
        // Gradient reaching this step's attention weights from the next step's
        // location term.
        let mut dalpha_next: Option<Array2<f32>> = None;
        // Each step's context gradient, for the contexts' path into `h` after the loop.
        let mut dctxs = Array3::<f32>::zeros((cache.steps.len(), batch, d));
        // The cells' weight gradients wait for one product over every step.
        let (mut pending0, mut pending1) = (Vec::new(), Vec::new());
        let mut dtable = cache.prepared.table.as_ref().map(Embedding::zeros_like);
        // The output layer needs nothing from the steps after it: one product over all
        // steps for its input's gradients and one for its weights'.
        let (steps, cached, width) = cache.out_in.dim();
        let vocab = self.out.output_dim();
        if cached != batch || width != sh + d {
            return Err(Error::Batch(format!(
                "the cache holds {cached} utterances with output layer inputs {width} wide; \
                 the listener states hold {batch}, for inputs {} wide",
                sh + d
            )));
        }
        if dlogits.dim() != (steps, batch, vocab) {
            return Err(Error::Batch(format!(
                "logit gradients {:?} do not fit the cache's {steps} steps of {batch} utterances over {vocab} characters",
                dlogits.shape()
            )));
        }
        let dout_ins = self
            .out
            .backward(
                cache
                    .out_in
                    .view()
                    .into_shape_with_order((steps * batch, width))
                    .expect("row-major"),
                dlogits
                    .as_standard_layout()
                    .view()
                    .into_shape_with_order((steps * batch, vocab))
                    .expect("row-major"),
                &mut grads.out,
            )?
            .into_shape_with_order((steps, batch, width))
            .expect("row-major");
        for (t, step) in cache.steps.iter().enumerate().rev() {
            let mut dout_in = dout_ins.slice(s![t, .., ..]).to_owned();
            if let Some(m) = &step.mask {
                dout_in *= m;
            }
            let mut dctx = dctxs.slice_mut(s![t, .., ..]);
            dctx.assign(&dout_in.slice(s![.., sh..]));
            dctx += &dctx_next;
            let (ds, dprev) = self.attention.step_backward(
                Some(&cache.prepared.attention),
                &step.attention,
                h,
                cache.keys.view(),
                dctx.view(),
                dalpha_next.as_ref().map(|d| d.view()),
                dkeys.view_mut(),
                &mut grads.attention,
            )?;
            dalpha_next = dprev;
            ds1.h = &dout_in.slice(s![.., ..sh]) + &ds + &ds1.h;
            let [p0, p1] = &cache.prepared.cells;
            let (dx1, ds1_prev) = self.cell1.backward_deferred(
                team,
                p1,
                &step.cell1,
                &ds1,
                &mut grads.cell1,
                &mut pending1,
            )?;
            ds0.h = dx1 + &ds0.h;
            let (dx0, ds0_prev) = self.cell0.backward_deferred(
                team,
                p0,
                &step.cell0,
                &ds0,
                &mut grads.cell0,
                &mut pending0,
            )?;
            match (&cache.prepared.table, &mut dtable) {
                // Cell 0's gate gradients, summed per character: the table's gradient.
                (Some(table), Some(dtable)) => {
                    let dgates = pending0.last().expect("an LSTM cell pushes its gates");
                    table.backward(&cache.inputs[t], dgates.view(), dtable)?;
                    dctx_next = dx0;
                }
                _ => {
                    self.emb
                        .backward(&cache.inputs[t], dx0.slice(s![.., ..e]), &mut grads.emb)?;
                    dctx_next = dx0.slice(s![.., e..]).to_owned();
                }
            }
            (ds0, ds1) = (ds0_prev, ds1_prev);
        }
        // Leave before the products over all steps, so that a member with more steps
        // goes on without waiting for them.
        if let Some(team) = team {
            team.leave();
        }
        if let Some(dtable) = &dtable {
            self.cell0.given_table_backward(
                self.emb.weight.view(),
                dtable.weight.view(),
                &mut grads.cell0,
                grads.emb.weight.view_mut(),
            )?;
        }
        let caches0: Vec<_> = cache.steps.iter().rev().map(|s| &s.cell0).collect();
        let caches1: Vec<_> = cache.steps.iter().rev().map(|s| &s.cell1).collect();
        self.cell0
            .accumulate(&caches0, &pending0, &mut grads.cell0)?;
        self.cell1
            .accumulate(&caches1, &pending1, &mut grads.cell1)?;
        let alphas: Vec<_> = cache.steps.iter().map(|s| s.attention.alpha()).collect();
        self.attention
            .contexts_backward(&alphas, dctxs.view(), dh.view_mut())?;
        dh += &self
            .attention
            .keys_backward(h, dkeys.view(), &mut grads.attention)?;
        Ok(dh)
    }
}

impl Module for Speller {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.emb.visit(&join(prefix, "emb"), f);
        self.cell0.visit(&join(prefix, "cell0"), f);
        self.cell1.visit(&join(prefix, "cell1"), f);
        self.attention.visit(prefix, f);
        self.out.visit(&join(prefix, "out"), f);
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.emb.visit_mut(&join(prefix, "emb"), f);
        self.cell0.visit_mut(&join(prefix, "cell0"), f);
        self.cell1.visit_mut(&join(prefix, "cell1"), f);
        self.attention.visit_mut(prefix, f);
        self.out.visit_mut(&join(prefix, "out"), f);
    }

    fn zeros_like(&self) -> Self {
        Speller {
            emb: self.emb.zeros_like(),
            cell0: self.cell0.zeros_like(),
            cell1: self.cell1.zeros_like(),
            attention: self.attention.zeros_like(),
            out: self.out.zeros_like(),
        }
    }
}

/// The whole model.
#[derive(Debug, Clone, PartialEq)]
pub struct Las {
    pub config: ModelConfig,
    pub listener: Listener,
    pub speller: Speller,
    /// CTC output layer on the listener states (`[V, 2H]`), when `ctc_weight > 0`.
    pub ctc: Option<Linear>,
}

/// Loss of a batch (or, added up, of several).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepStats {
    /// Sum of per-token cross-entropy (nats).
    pub loss_sum: f64,
    /// Scored tokens (transcript characters plus one `<eos>` per utterance).
    pub tokens: usize,
    /// Sum of the utterances' CTC losses (0 without a CTC head).
    pub ctc_sum: f64,
    /// Characters of the utterances the CTC loss counted.
    pub ctc_labels: usize,
    /// Utterances too short for CTC to align their transcript (left out of its loss).
    pub ctc_infeasible: usize,
    /// The CTC weight of the objective.
    pub ctc_weight: f32,
}

impl StepStats {
    /// Mean cross-entropy per token.
    pub fn mean(&self) -> f64 {
        self.loss_sum / self.tokens.max(1) as f64
    }

    /// The loss a log reports: [`StepStats::mean`], or for a CTC-only objective
    /// (`ctc_weight` 1, no attention term) [`StepStats::ctc_mean`].
    pub fn loss(&self) -> f64 {
        if crate::config::ctc_alone(self.ctc_weight) {
            self.ctc_mean()
        } else {
            self.mean()
        }
    }

    /// CTC loss per character.
    pub fn ctc_mean(&self) -> f64 {
        self.ctc_sum / self.ctc_labels.max(1) as f64
    }

    /// The training objective: `(1 - w) * mean() + w * ctc_mean()`.
    pub fn objective(&self) -> f64 {
        let w = f64::from(self.ctc_weight);
        (1.0 - w) * self.mean() + w * self.ctc_mean()
    }

    /// Adds another batch's sums (same weight).
    pub fn add(&mut self, other: &StepStats) {
        self.loss_sum += other.loss_sum;
        self.tokens += other.tokens;
        self.ctc_sum += other.ctc_sum;
        self.ctc_labels += other.ctc_labels;
        self.ctc_infeasible += other.ctc_infeasible;
        self.ctc_weight = other.ctc_weight;
    }
}

/// Everything a backward pass needs, plus the attention weights.
#[derive(Debug, Clone)]
pub struct LasCache {
    listener: ListenerCache,
    /// `None` for a CTC-only objective (`ctc_weight` 1), which never runs the speller.
    speller: Option<SpellerCache>,
    h: Array3<f32>,
    /// `dL/dlogits` of the objective, `[L, B, V]` (empty without a speller pass).
    dlogits: Array3<f32>,
    /// `dL/dlogits` of the CTC head, `[U, B, V]`, when there is one.
    dctc: Option<Array3<f32>>,
}

impl LasCache {
    /// Attention weights `[L, B, U]`; `None` when the speller did not run (a
    /// CTC-only objective, `ctc_weight` 1).
    pub fn attention(&self) -> Option<Array3<f32>> {
        self.speller.as_ref().map(|s| s.attention())
    }
}

/// Decoder inputs `[L][B]` (`<sos> y..`, padded with `<eos>`) and scored targets
/// `[L * B]` in `[t][b]` order (`y.. <eos>`, `None` past the end) of transcripts
/// `targets` `[B]`, with `c`'s `<sos>` and `<eos>`.
pub(crate) fn teacher_forcing(
    c: &ModelConfig,
    targets: &[Vec<usize>],
) -> (Vec<Vec<usize>>, Vec<Option<usize>>) {
    let steps = targets.iter().map(|t| t.len() + 1).max().unwrap_or(1);
    let mut inputs = vec![vec![c.eos; targets.len()]; steps];
    let mut scored = vec![None; steps * targets.len()];
    for (b, t) in targets.iter().enumerate() {
        for step in 0..=t.len() {
            inputs[step][b] = if step == 0 { c.sos } else { t[step - 1] };
            scored[step * targets.len() + b] = Some(if step < t.len() { t[step] } else { c.eos });
        }
    }
    (inputs, scored)
}

/// A model built by [`Las::grown_from`] and what of it came from the trained one.
#[derive(Debug, Clone)]
pub struct Grown {
    /// The model.
    pub las: Las,
    /// Names of the tensors copied from the trained model, in [`Module::visit`] order.
    pub copied: Vec<String>,
    /// Names of the tensors that start freshly initialised.
    pub fresh: Vec<String>,
    /// Names of the trained model's trained tensors that the new one has no place for.
    pub dropped: Vec<String>,
}

impl Las {
    /// A freshly initialised model (PyTorch's default initialisation for every layer).
    pub fn new(config: ModelConfig, rng: &mut impl Rng) -> Result<Self> {
        config.validate()?;
        Ok(Las {
            listener: Listener::new(&config, rng),
            speller: Speller::new(&config, rng),
            ctc: config
                .has_ctc()
                .then(|| Linear::new(config.listener_dim(), config.vocab_size, true, rng)),
            config,
        })
    }

    /// A model of `config` whose parts `trained` has trained start from it: every
    /// tensor of its listener, of its CTC head if it has one and of its speller if its
    /// `ctc_weight` trained one, copied where this config has a tensor of that name and
    /// shape; every other tensor is freshly initialised from `rng` (as [`Las::new`]).
    /// For a later phase that adds a part, such as a speller grown onto a listener
    /// trained with CTC alone. The listener's fields (`input_dim`, `listener_hidden`,
    /// `frame_stack`, `pyramid_layers`, `top_layers`, `cell`) and the vocabulary must be
    /// `trained`'s, so the listener comes whole (the initial model's feature statistics
    /// go with it); otherwise an error names the fields that differ. What of `trained`
    /// is left out (a speller of other sizes, a CTC head `config` does not have) is
    /// listed in [`Grown::dropped`].
    pub fn grown_from(config: ModelConfig, trained: &Las, rng: &mut impl Rng) -> Result<Grown> {
        let (a, b) = (&config, &trained.config);
        let field = |name: &'static str, x: &dyn std::fmt::Debug, y: &dyn std::fmt::Debug| {
            (name, format!("{x:?}"), format!("{y:?}"))
        };
        let fields = [
            field("input_dim", &a.input_dim, &b.input_dim),
            field("listener_hidden", &a.listener_hidden, &b.listener_hidden),
            field("frame_stack", &a.frame_stack, &b.frame_stack),
            field("pyramid_layers", &a.pyramid_layers, &b.pyramid_layers),
            field("top_layers", &a.top_layers, &b.top_layers),
            field("cell", &a.cell, &b.cell),
            field("vocab_size", &a.vocab_size, &b.vocab_size),
            field("sos", &a.sos, &b.sos),
            field("eos", &a.eos, &b.eos),
            field("blank", &a.blank, &b.blank),
        ];
        let differ: Vec<String> = fields
            .iter()
            .filter(|(_, x, y)| x != y)
            .map(|(name, x, y)| format!("{name} {x} (the initial model's {y})"))
            .collect();
        if !differ.is_empty() {
            return Err(Error::Config(format!(
                "the listener and the vocabulary must be the initial model's, but {}",
                differ.join(", ")
            )));
        }
        let mut las = Las::new(config, rng)?;
        let mut source: Vec<(String, ArrayViewD<'_, f32>)> = Vec::new();
        trained.listener.visit("listener", &mut |name, t| {
            source.push((name, t));
        });
        if let Some(ctc) = &trained.ctc {
            ctc.visit("ctc", &mut |name, t| source.push((name, t)));
        }
        if trained.config.trains_speller() {
            trained
                .speller
                .visit("speller", &mut |name, t| source.push((name, t)));
        }
        let by_name: std::collections::HashMap<&str, &ArrayViewD<'_, f32>> =
            source.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let (mut copied, mut fresh) = (Vec::new(), Vec::new());
        las.visit_mut("", &mut |name, mut t| match by_name.get(name.as_str()) {
            Some(s) if s.shape() == t.shape() => {
                t.assign(*s);
                copied.push(name);
            }
            _ => fresh.push(name),
        });
        // Equal fields give equal listeners; a mismatch here is a bug, not bad input.
        if let Some(name) = fresh.iter().find(|n| n.starts_with("listener.")) {
            return Err(Error::Model(format!(
                "the listener's {name} has no trained tensor of its name and shape"
            )));
        }
        let dropped = source
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !copied.contains(n))
            .cloned()
            .collect();
        Ok(Grown {
            las,
            copied,
            fresh,
            dropped,
        })
    }

    fn check(&self, batch: &Batch) -> Result<()> {
        let (steps, b, f) = batch.feats.dim();
        let c = &self.config;
        if f != c.input_dim {
            return Err(Error::Batch(format!(
                "features are {f} wide, the model reads {}",
                c.input_dim
            )));
        }
        if batch.lengths.len() != b || batch.targets.len() != b {
            return Err(Error::Batch(format!(
                "{b} feature sequences, {} lengths, {} transcripts",
                batch.lengths.len(),
                batch.targets.len()
            )));
        }
        if let Some(seeds) = batch.seeds.as_ref().filter(|s| s.len() != b) {
            return Err(Error::Batch(format!(
                "{b} utterances but {} noise seeds",
                seeds.len()
            )));
        }
        for (i, &l) in batch.lengths.iter().enumerate() {
            if l > steps || l < c.reduction() {
                return Err(Error::Batch(format!(
                    "utterance {i} has {l} frames: need between {} (one listener frame) and {steps}",
                    c.reduction()
                )));
            }
        }
        for (i, t) in batch.targets.iter().enumerate() {
            if let Some(&bad) = t.iter().find(|&&tok| tok >= c.vocab_size) {
                return Err(Error::Batch(format!(
                    "transcript {i} holds token {bad}, outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
            if c.has_ctc() && t.contains(&c.blank) {
                return Err(Error::Batch(format!(
                    "transcript {i} holds the CTC blank {}",
                    c.blank
                )));
            }
        }
        Ok(())
    }

    fn teacher_forcing(&self, targets: &[Vec<usize>]) -> (Vec<Vec<usize>>, Vec<Option<usize>>) {
        teacher_forcing(&self.config, targets)
    }

    /// Teacher-forced logits `[L, B, V]` of a batch. The speller runs whatever the
    /// objective: a CTC-only model's logits come from its untrained speller.
    pub fn logits(&self, batch: &Batch) -> Result<Array3<f32>> {
        self.check(batch)?;
        let (h, lengths, _) = self
            .listener
            .forward(batch.feats.view(), &batch.lengths, None)?;
        let (inputs, _) = self.teacher_forcing(&batch.targets);
        Ok(self.speller.forward(h.view(), &lengths, &inputs, None)?.0)
    }

    /// Forward pass and loss; the cache feeds [`Las::backward`].
    pub fn forward(&self, batch: &Batch) -> Result<(StepStats, LasCache)> {
        self.forward_in(None, batch)
    }

    /// [`Las::forward`] with the speller's weights `prepared` (made here if not given).
    fn forward_in(
        &self,
        prepared: Option<Arc<PreparedSpeller>>,
        batch: &Batch,
    ) -> Result<(StepStats, LasCache)> {
        let listened = self.listen(batch)?;
        self.spell(None, prepared, batch, listened)
    }

    /// The first half of [`Las::forward`]: the batch checked and heard.
    fn listen(&self, batch: &Batch) -> Result<Listened> {
        self.check(batch)?;
        let (h, lengths, cache) = self.listener.forward(
            batch.feats.view(),
            &batch.lengths,
            noise(batch, &self.config),
        )?;
        Ok(Listened { h, lengths, cache })
    }

    /// The second half of [`Las::forward`]: speller, losses and the whole cache, as a
    /// member of `team`, if given (the speller's products share their weight stream,
    /// see [`Speller::forward_in`]), with the speller's weights `prepared` (made here
    /// if not given).
    fn spell(
        &self,
        team: Option<&TeamMember>,
        prepared: Option<Arc<PreparedSpeller>>,
        batch: &Batch,
        listened: Listened,
    ) -> Result<(StepStats, LasCache)> {
        let noise = noise(batch, &self.config);
        let Listened {
            h,
            lengths,
            cache: listener,
        } = listened;
        let w = self.config.ctc_weight;
        let mut stats = StepStats {
            loss_sum: 0.0,
            tokens: 0,
            ctc_sum: 0.0,
            ctc_labels: 0,
            ctc_infeasible: 0,
            ctc_weight: w,
        };
        // With the attention term weighted 0 the speller's gradients, and what it sends
        // back to the listener, are exactly zero: skipping it changes no gradient and
        // saves most of a small model's step.
        let (speller, dlogits) = if self.config.trains_speller() {
            let (inputs, scored) = self.teacher_forcing(&batch.targets);
            let (logits, speller) =
                self.speller
                    .forward_in(team, prepared, h.view(), &lengths, &inputs, noise)?;
            let (steps, b, v) = logits.dim();
            let flat = logits
                .view()
                .into_shape_with_order((steps * b, v))
                .expect("row-major");
            let ce = softmax_cross_entropy_smoothed(flat, &scored, self.config.label_smoothing)?;
            let mut dlogits = ce
                .grad
                .into_shape_with_order((steps, b, v))
                .expect("row-major");
            if w > 0.0 {
                dlogits *= 1.0 - w;
            }
            stats.loss_sum = ce.sum;
            stats.tokens = ce.count;
            (Some(speller), dlogits)
        } else {
            (
                None,
                Array3::zeros((0, batch.targets.len(), self.config.vocab_size)),
            )
        };
        let dctc = match self.ctc_logits(h.view())? {
            Some(ctc_logits) => {
                let ctc = ctc_loss(
                    ctc_logits.view(),
                    &lengths,
                    &batch.targets,
                    self.config.blank,
                )?;
                stats.ctc_sum = ctc.sum;
                stats.ctc_labels = ctc.labels;
                stats.ctc_infeasible = ctc.infeasible.len();
                Some(ctc.grad * (w / ctc.labels.max(1) as f32))
            }
            None => None,
        };
        Ok((
            stats,
            LasCache {
                listener,
                speller,
                h,
                dlogits,
                dctc,
            },
        ))
    }

    /// CTC logits `[U, B, V]` of listener states `h` `[U, B, D]`, if the model has a
    /// CTC head.
    pub fn ctc_logits(&self, h: ArrayView3<f32>) -> Result<Option<Array3<f32>>> {
        let Some(ctc) = &self.ctc else {
            return Ok(None);
        };
        let (u, b, d) = h.dim();
        let flat = h.to_shape((u * b, d)).expect("any layout reshapes");
        let y = ctc.forward(flat.view())?;
        Ok(Some(
            y.into_shape_with_order((u, b, self.config.vocab_size))
                .expect("row-major"),
        ))
    }

    /// Adds the gradient of the mean loss into `grads`; returns `dL/dfeats` `[T, B, F]`.
    /// `cache` must come from [`Las::forward`] on these very weights: it holds the
    /// speller's weights as packed then, which backward's per-step products read.
    pub fn backward(&self, cache: &LasCache, grads: &mut Las) -> Result<Array3<f32>> {
        Ok(self
            .backward_to(cache, grads, true)?
            .expect("the input gradient was asked for"))
    }

    /// [`Las::backward`], returning `dL/dfeats` only if `input_grad` (training has no
    /// use for it).
    fn backward_to(
        &self,
        cache: &LasCache,
        grads: &mut Las,
        input_grad: bool,
    ) -> Result<Option<Array3<f32>>> {
        let dh = self.unspell(None, cache, grads)?;
        self.listener
            .backward(&cache.listener, dh.view(), &mut grads.listener, input_grad)
    }

    /// The first half of [`Las::backward`]: the speller's and the CTC head's gradients
    /// added into `grads`, as a member of `team`, if given; returns `dL/dh`, the
    /// gradient reaching the listener's states `[U, B, D]`.
    fn unspell(
        &self,
        team: Option<&TeamMember>,
        cache: &LasCache,
        grads: &mut Las,
    ) -> Result<Array3<f32>> {
        let mut dh = match &cache.speller {
            Some(speller) => self.speller.backward_in(
                team,
                speller,
                cache.h.view(),
                cache.dlogits.view(),
                &mut grads.speller,
            )?,
            None => Array3::zeros(cache.h.dim()),
        };
        if let (Some(ctc), Some(g), Some(dctc)) = (&self.ctc, &mut grads.ctc, &cache.dctc) {
            let (u, b, d) = cache.h.dim();
            let v = self.config.vocab_size;
            let h = cache.h.to_shape((u * b, d)).expect("any layout reshapes");
            let dy = dctc.to_shape((u * b, v)).expect("any layout reshapes");
            let dx = ctc.backward(h.view(), dy.view(), g)?;
            dh += &dx.into_shape_with_order((u, b, d)).expect("row-major");
        }
        Ok(dh)
    }

    /// Forward and backward: the loss of `batch`, gradients added into `grads`.
    pub fn train_step(&self, batch: &Batch, grads: &mut Las) -> Result<StepStats> {
        let (stats, cache) = self.forward(batch)?;
        self.backward_to(&cache, grads, false)?;
        Ok(stats)
    }

    /// [`Las::train_step`] with the batch cut into `parts` groups of utterances that run
    /// on separate threads; same loss and gradients up to float rounding. The speller
    /// steps through time with products too small to spread over threads, so one
    /// batch keeps one core busy; parts keep them all busy.
    pub fn train_step_parallel(
        &self,
        batch: &Batch,
        grads: &mut Las,
        parts: usize,
    ) -> Result<StepStats> {
        use rayon::prelude::*;
        let b = batch.lengths.len();
        let parts = parts.clamp(1, b.max(1));
        if parts == 1 {
            return self.train_step(batch, grads);
        }
        let subs: Vec<Batch> = (0..parts)
            .map(|i| batch.part(i * b / parts..(i + 1) * b / parts))
            .collect();
        // With a pool thread for each part, the parts' spellers run as a team whose
        // products share their weights' stream from L3 (lasr_nn::team); the same bits
        // either way. The listeners run before and after it, one part per thread as
        // before (their products stay in L2), so that a part done early helps the
        // other.
        let team = Team::shares_products()
            && parts <= rayon::current_num_threads().min(Team::MAX_MEMBERS)
            && self.config.trains_speller();
        // The speller's weights are packed once for all parts.
        let prepared = self
            .config
            .trains_speller()
            .then(|| self.speller.prepare().map(Arc::new))
            .transpose()?;
        let mut fwd = if team {
            let heard = subs
                .par_iter()
                .map(|sub| self.listen(sub))
                .collect::<Result<Vec<_>>>()?;
            let work: Vec<_> = subs.iter().zip(heard).collect();
            Team::run(work, |member, (sub, heard)| {
                lasr_nn::linalg::serial(|| self.spell(Some(member), prepared.clone(), sub, heard))
            })
            .into_iter()
            .collect::<Result<Vec<_>>>()?
        } else {
            subs.par_iter()
                .map(|sub| self.forward_in(prepared.clone(), sub))
                .collect::<Result<Vec<_>>>()?
        };
        let tokens: usize = fwd.iter().map(|(s, _)| s.tokens).sum();
        let labels: usize = fwd.iter().map(|(s, _)| s.ctc_labels).sum();
        // Each part's gradients are of its own means; reweight them into the batch's.
        for (stats, cache) in &mut fwd {
            cache.dlogits *= stats.tokens as f32 / tokens.max(1) as f32;
            if let Some(d) = &mut cache.dctc {
                // forward scaled by w / max(labels_i, 1); the batch wants w / max(L, 1),
                // also for a part whose transcripts are all empty.
                *d *= stats.ctc_labels.max(1) as f32 / labels.max(1) as f32;
            }
        }
        let part_grads = if team {
            let spelled = Team::run(fwd.iter().collect(), |member, (_, cache)| {
                lasr_nn::linalg::serial(|| {
                    let mut g = self.zeros_like();
                    let dh = self.unspell(Some(member), cache, &mut g)?;
                    Ok((g, dh))
                })
            })
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
            spelled
                .into_par_iter()
                .zip(&fwd)
                .map(|((mut g, dh), (_, cache))| {
                    self.listener
                        .backward(&cache.listener, dh.view(), &mut g.listener, false)?;
                    Ok(g)
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            fwd.par_iter()
                .map(|(_, cache)| {
                    let mut g = self.zeros_like();
                    self.backward_to(cache, &mut g, false)?;
                    Ok(g)
                })
                .collect::<Result<Vec<_>>>()?
        };
        for g in &part_grads {
            grads.add_from(g);
        }
        let mut total = fwd[0].0;
        for (s, _) in &fwd[1..] {
            total.add(s);
        }
        Ok(total)
    }
}

impl Module for Las {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.listener.visit(&join(prefix, "listener"), f);
        self.speller.visit(&join(prefix, "speller"), f);
        if let Some(ctc) = &self.ctc {
            ctc.visit(&join(prefix, "ctc"), f);
        }
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.listener.visit_mut(&join(prefix, "listener"), f);
        self.speller.visit_mut(&join(prefix, "speller"), f);
        if let Some(ctc) = &mut self.ctc {
            ctc.visit_mut(&join(prefix, "ctc"), f);
        }
    }

    fn zeros_like(&self) -> Self {
        Las {
            config: self.config.clone(),
            listener: self.listener.zeros_like(),
            speller: self.speller.zeros_like(),
            ctc: self.ctc.as_ref().map(Module::zeros_like),
        }
    }
}

/// Index of the largest value (the first of equals).
fn argmax(v: ndarray::ArrayView1<f32>) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}
