//! A character LSTM language model, for re-ranking a search's n-best list.
//!
//! Embedding -> LSTM layers -> linear to the vocabulary, run over whole sentences from
//! a zero state: `<sos> c1 .. cn` in, `c1 .. cn <eos>` out. That is the unit the
//! n-gram models of `lasr-decode` score too (perplexity per predicted character,
//! `<eos>` included), so the two kinds compare on one scale. An n-gram model of order
//! 6 sees five characters back; the LSTM sees the whole sentence, which is why it is
//! worth running over the few hypotheses a search leaves.
//!
//! Sequences are time-major `[T, B]` as everywhere in lasr. Parameter names follow a
//! PyTorch module with fields `embedding`, `rnn` (an `nn.LSTM`) and `output`:
//! `embedding.weight`, `rnn.weight_ih_l0`, ..., `output.weight`, `output.bias`.

use std::collections::HashMap;
use std::path::Path;

use lasr_decode::Vocab;
use lasr_nn::{
    softmax_cross_entropy, Dropout, Embedding, Linear, Lstm, LstmCache, LstmCell, Module,
    PreparedLstmCell, WeightFormat,
};
use ndarray::{Array2, Array3, ArrayViewD, ArrayViewMutD};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the model file's `format` metadata says, so that a model file of another kind
/// is refused by name rather than by a missing tensor.
pub const RNNLM_FORMAT: &str = "lasr-rnnlm";
/// Version of the file layout written by [`RnnLm::to_bytes`].
pub const RNNLM_VERSION: u32 = 1;

/// Sizes of an [`RnnLm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RnnLmConfig {
    /// Output width: the vocabulary's size, specials included.
    pub vocab_size: usize,
    pub embedding_dim: usize,
    /// Width of every LSTM layer.
    pub hidden: usize,
    pub layers: usize,
    /// Drop probability on each LSTM layer's output while training (0 = none).
    pub dropout: f32,
    /// Reads sentences right to left (`<sos> cn .. c1` in, `cn .. c1 <eos>` out): a
    /// backward model, whose probability of a sentence complements a forward
    /// model's. [`RnnLmScorer`] takes sentences in reading order and turns them
    /// around; [`RnnLm`]'s own methods and [`train_rnnlm`] take them as the model
    /// reads them. Left out of the file when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reversed: bool,
}

impl RnnLmConfig {
    /// Checks that every size is usable.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size <= Vocab::EOS || self.embedding_dim == 0 || self.hidden == 0 {
            return Err(Error::Config(format!(
                "LSTM language model: vocab_size {} (must hold <eos>, id {}), embedding_dim {} and hidden {} must be positive",
                self.vocab_size,
                Vocab::EOS,
                self.embedding_dim,
                self.hidden
            )));
        }
        if self.layers == 0 {
            return Err(Error::Config(
                "LSTM language model: layers must be at least 1".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "LSTM language model: dropout {} must lie in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// The character LSTM language model: `embedding` `[V, E]`, `rnn` (one [`Lstm`] per
/// layer, `[4H, E]` then `[4H, H]` inputs), `output` `[V, H]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RnnLm {
    pub config: RnnLmConfig,
    pub embedding: Embedding,
    pub rnn: Vec<Lstm>,
    pub output: Linear,
}

impl Module for RnnLm {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.embedding
            .visit(&lasr_nn::module::join(prefix, "embedding"), f);
        let rnn = lasr_nn::module::join(prefix, "rnn");
        for layer in &self.rnn {
            layer.visit(&rnn, f);
        }
        self.output
            .visit(&lasr_nn::module::join(prefix, "output"), f);
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.embedding
            .visit_mut(&lasr_nn::module::join(prefix, "embedding"), f);
        let rnn = lasr_nn::module::join(prefix, "rnn");
        for layer in &mut self.rnn {
            layer.visit_mut(&rnn, f);
        }
        self.output
            .visit_mut(&lasr_nn::module::join(prefix, "output"), f);
    }

    fn zeros_like(&self) -> Self {
        RnnLm {
            config: self.config.clone(),
            embedding: self.embedding.zeros_like(),
            rnn: self.rnn.iter().map(Module::zeros_like).collect(),
            output: self.output.zeros_like(),
        }
    }
}

/// What the backward pass needs from the forward pass over one batch.
struct Forward {
    /// Input ids, time-major `[T * B]` (`<sos>` first, padding after each end).
    ids: Vec<usize>,
    /// Target per position `[T * B]`, `None` past a sentence's `<eos>`.
    targets: Vec<Option<usize>>,
    /// One cache per LSTM layer.
    caches: Vec<LstmCache>,
    /// Dropout mask applied to each layer's output `[T, B, H]`, when training.
    masks: Vec<Option<Array3<f32>>>,
    /// The last layer's output after dropout, `[T * B, H]`: the output layer's input.
    top: Array2<f32>,
    /// `[T * B, V]`.
    logits: Array2<f32>,
    steps: usize,
    batch: usize,
}

impl RnnLm {
    /// A model with PyTorch's initialisation, drawn from `rng`.
    pub fn new(config: RnnLmConfig, rng: &mut impl rand::Rng) -> Result<RnnLm> {
        config.validate()?;
        let embedding = Embedding::new(config.vocab_size, config.embedding_dim, rng);
        let rnn = (0..config.layers)
            .map(|l| {
                let input = if l == 0 {
                    config.embedding_dim
                } else {
                    config.hidden
                };
                Lstm::new(input, config.hidden, false, &format!("_l{l}"), rng)
            })
            .collect();
        let output = Linear::new(config.hidden, config.vocab_size, true, rng);
        Ok(RnnLm {
            config,
            embedding,
            rnn,
            output,
        })
    }

    /// Runs `seqs` (each `[n_b]` token ids, no `<sos>`/`<eos>`) as one time-major batch.
    /// `dropout_seeds` `[B]` turns dropout on (training), one seed per sentence.
    fn forward(&self, seqs: &[&[usize]], dropout_seeds: Option<&[u64]>) -> Result<Forward> {
        let batch = seqs.len();
        let steps = seqs.iter().map(|s| s.len() + 1).max().unwrap_or(0);
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len() + 1).collect();
        let mut ids = vec![Vocab::PAD; steps * batch];
        let mut targets = vec![None; steps * batch];
        for (b, s) in seqs.iter().enumerate() {
            if let Some(&bad) = s.iter().find(|&&t| t >= self.config.vocab_size) {
                return Err(Error::Batch(format!(
                    "token {bad} is outside the LSTM language model's vocabulary of {}",
                    self.config.vocab_size
                )));
            }
            ids[b] = Vocab::SOS;
            for (t, &tok) in s.iter().enumerate() {
                ids[(t + 1) * batch + b] = tok;
                targets[t * batch + b] = Some(tok);
            }
            targets[s.len() * batch + b] = Some(Vocab::EOS);
        }
        let mut x = self
            .embedding
            .forward(&ids)?
            .into_shape_with_order((steps, batch, self.config.embedding_dim))
            .expect("embedding rows are time-major [T * B, E]");
        let mut caches = Vec::with_capacity(self.rnn.len());
        let mut masks = Vec::with_capacity(self.rnn.len());
        for (l, layer) in self.rnn.iter().enumerate() {
            let (mut h, cache) = layer.forward(x.view(), Some(&lengths))?;
            let mask = match dropout_seeds {
                Some(seeds) if self.config.dropout > 0.0 => {
                    let m = Dropout {
                        p: self.config.dropout,
                    }
                    .mask(h.dim(), seeds, l as u64);
                    h *= &m;
                    Some(m)
                }
                _ => None,
            };
            caches.push(cache);
            masks.push(mask);
            x = h;
        }
        let top = x
            .into_shape_with_order((steps * batch, self.config.hidden))
            .expect("the LSTM's output is contiguous");
        let logits = self.output.forward(top.view())?;
        Ok(Forward {
            ids,
            targets,
            caches,
            masks,
            top,
            logits,
            steps,
            batch,
        })
    }

    /// Teacher-forced training pass over `seqs` (each `[n_b]` token ids): adds the
    /// gradient of `scale` times the summed negative log-likelihood into `grads`, and
    /// returns that sum (unscaled, in nats) with the number of predicted tokens
    /// (`<eos>` included). `dropout_seeds` `[B]` as for the forward pass.
    pub fn train_step(
        &self,
        seqs: &[&[usize]],
        dropout_seeds: Option<&[u64]>,
        scale: f32,
        grads: &mut RnnLm,
    ) -> Result<(f64, usize)> {
        let fwd = self.forward(seqs, dropout_seeds)?;
        let ce = softmax_cross_entropy(fwd.logits.view(), &fwd.targets)?;
        // `ce.grad` is the gradient of the mean; the caller's scale is per token.
        let dlogits = ce.grad * (scale * ce.count as f32);
        let dtop = self
            .output
            .backward(fwd.top.view(), dlogits.view(), &mut grads.output)?;
        let mut d = dtop
            .into_shape_with_order((fwd.steps, fwd.batch, self.config.hidden))
            .expect("contiguous [T * B, H]");
        for l in (0..self.rnn.len()).rev() {
            if let Some(m) = &fwd.masks[l] {
                d *= m;
            }
            d = self.rnn[l].backward(&fwd.caches[l], d.view(), &mut grads.rnn[l])?;
        }
        let d = d
            .into_shape_with_order((fwd.steps * fwd.batch, self.config.embedding_dim))
            .expect("contiguous [T, B, E]");
        self.embedding
            .backward(&fwd.ids, d.view(), &mut grads.embedding)?;
        Ok((ce.sum, ce.count))
    }

    /// Natural-log probability of each sentence `seqs[b]` (token ids `[n_b]`, no
    /// `<sos>`/`<eos>`), `<eos>` included: `[B]`.
    pub fn log_probs(&self, seqs: &[&[usize]]) -> Result<Vec<f64>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut fwd = self.forward(seqs, None)?;
        lasr_nn::activation::log_softmax_rows(fwd.logits.view_mut());
        let mut out = vec![0f64; seqs.len()];
        for (i, t) in fwd.targets.iter().enumerate() {
            if let Some(t) = t {
                out[i % fwd.batch] += f64::from(fwd.logits[(i, *t)]);
            }
        }
        Ok(out)
    }

    /// The model as safetensors bytes: its tensors, and metadata `format`
    /// ([`RNNLM_FORMAT`]), `version`, `config` and `vocabulary` (JSON).
    pub fn to_bytes(&self, vocab: &Vocab) -> Result<Vec<u8>> {
        self.check_vocab(vocab)?;
        let meta = HashMap::from([
            ("format".to_string(), RNNLM_FORMAT.to_string()),
            ("version".to_string(), RNNLM_VERSION.to_string()),
            (
                "config".to_string(),
                serde_json::to_string(&self.config).expect("the config serialises"),
            ),
            (
                "vocabulary".to_string(),
                serde_json::to_string(vocab).expect("the vocabulary serialises"),
            ),
        ]);
        Ok(lasr_nn::checkpoint::to_bytes(self, "", &meta)?)
    }

    /// Reads [`RnnLm::to_bytes`]'s bytes back, with the vocabulary it was trained on.
    pub fn from_bytes(bytes: &[u8]) -> Result<(RnnLm, Vocab)> {
        let meta = lasr_nn::checkpoint::metadata(bytes)?;
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| {
                Error::Model(format!(
                    "not an LSTM language model (no `{key}` in its metadata; `lasr rnnlm` writes them)"
                ))
            })
        };
        if get("format")? != RNNLM_FORMAT {
            return Err(Error::Model(format!(
                "not an LSTM language model: its format is `{}`, not `{RNNLM_FORMAT}`",
                meta["format"]
            )));
        }
        let version: u32 = get("version")?
            .parse()
            .map_err(|_| Error::Model(format!("unreadable version `{}`", meta["version"])))?;
        if version > RNNLM_VERSION {
            return Err(Error::Model(format!(
                "LSTM language model version {version} is newer than this lasr reads ({RNNLM_VERSION})"
            )));
        }
        let config: RnnLmConfig = serde_json::from_str(get("config")?)
            .map_err(|e| Error::Model(format!("unreadable LSTM language model config: {e}")))?;
        let vocab: Vocab = serde_json::from_str(get("vocabulary")?)
            .map_err(|e| Error::Model(format!("unreadable vocabulary: {e}")))?;
        config.validate()?;
        // The sizes come from the file: check them against the tensors it holds
        // before allocating, so a hostile config cannot ask for terabytes.
        let (v, e, h, l) = (
            config.vocab_size as f64,
            config.embedding_dim as f64,
            config.hidden as f64,
            config.layers as f64,
        );
        let expected =
            v * e + 4.0 * h * (e + h + 2.0) + (l - 1.0) * 4.0 * h * (2.0 * h + 2.0) + v * h + v;
        let held = lasr_nn::checkpoint::contents(bytes)?.values;
        if expected != held {
            return Err(Error::Model(format!(
                "its config (vocabulary {}, embedding {}, hidden {}, {} layers) needs {expected} values, but its tensors hold {held}",
                config.vocab_size, config.embedding_dim, config.hidden, config.layers
            )));
        }
        let mut lm = {
            use rand::SeedableRng;
            RnnLm::new(config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0))?
        };
        lm.check_vocab(&vocab)?;
        lasr_nn::checkpoint::from_bytes(bytes, "", &mut lm)?;
        Ok((lm, vocab))
    }

    /// [`RnnLm::to_bytes`] written to `path` atomically.
    pub fn save(&self, path: &Path, vocab: &Vocab) -> Result<()> {
        let bytes = self.to_bytes(vocab)?;
        lasr_nn::checkpoint::write_atomic(path, &bytes)?;
        Ok(())
    }

    /// [`RnnLm::from_bytes`] of the file at `path`; errors name it.
    pub fn load(path: &Path) -> Result<(RnnLm, Vocab)> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Model(format!("{}: cannot read: {e}", path.display())))?;
        RnnLm::from_bytes(&bytes).map_err(|e| Error::Model(format!("{}: {e}", path.display())))
    }

    fn check_vocab(&self, vocab: &Vocab) -> Result<()> {
        if vocab.len() != self.config.vocab_size {
            return Err(Error::Model(format!(
                "the LSTM language model has {} outputs but its vocabulary {} symbols",
                self.config.vocab_size,
                vocab.len()
            )));
        }
        Ok(())
    }
}

/// An [`RnnLm`] laid out for scoring n-best lists: each layer as a step-wise cell with
/// its weights transposed once. Make it once per model (`RnnLm::scorer`).
#[derive(Debug, Clone)]
pub struct RnnLmScorer {
    lm: RnnLm,
    vocab: Vocab,
    cells: Vec<(LstmCell, PreparedLstmCell)>,
}

impl RnnLm {
    /// This model, trained on `vocab`, as an [`RnnLmScorer`] whose recurrent products
    /// read the weights as `format` holds them (int8 as the listener's in `--weights
    /// int8`: the fastest, the scores a little off the f32 ones). Errors if `vocab`
    /// does not fit the output layer.
    pub fn scorer(&self, vocab: &Vocab, format: WeightFormat) -> Result<RnnLmScorer> {
        self.check_vocab(vocab)?;
        let cells = self
            .rnn
            .iter()
            .map(|l| {
                let cell = LstmCell {
                    weight_ih: l.weight_ih.clone(),
                    weight_hh: l.weight_hh.clone(),
                    bias_ih: l.bias_ih.clone(),
                    bias_hh: l.bias_hh.clone(),
                };
                let prepared = cell.prepare_packed(format);
                (cell, prepared)
            })
            .collect();
        Ok(RnnLmScorer {
            lm: self.clone(),
            vocab: vocab.clone(),
            cells,
        })
    }
}

/// One distinct prefix of the hypotheses being scored: its row in the step's state,
/// and the hypotheses that share it.
struct Node {
    row: usize,
    members: Vec<usize>,
}

impl RnnLmScorer {
    /// The model's sizes.
    pub fn config(&self) -> &RnnLmConfig {
        &self.lm.config
    }

    /// The model scored from.
    pub fn model(&self) -> &RnnLm {
        &self.lm
    }

    /// The vocabulary the model was trained on.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// [`RnnLm::log_probs`] computed once per distinct prefix: `seqs` (token ids
    /// `[n_b]`, no `<sos>`/`<eos>`) -> natural-log probabilities `[B]`, `<eos>`
    /// included. An n-best list shares most of its prefixes (a 16-best from a wide
    /// CTC beam has a few times fewer distinct prefixes than tokens), and all
    /// prefixes of one length run as one batched step. In f32 equal to `log_probs` up
    /// to float summation order.
    pub fn log_probs(&self, seqs: &[&[usize]]) -> Result<Vec<f64>> {
        if self.lm.config.reversed {
            let turned: Vec<Vec<usize>> = seqs
                .iter()
                .map(|s| s.iter().rev().copied().collect())
                .collect();
            let refs: Vec<&[usize]> = turned.iter().map(Vec::as_slice).collect();
            return self.log_probs_as_read(&refs);
        }
        self.log_probs_as_read(seqs)
    }

    /// [`RnnLmScorer::log_probs`] of `seqs` in the model's reading direction.
    fn log_probs_as_read(&self, seqs: &[&[usize]]) -> Result<Vec<f64>> {
        let config = &self.lm.config;
        if let Some(&bad) = seqs
            .iter()
            .flat_map(|s| s.iter())
            .find(|&&t| t >= config.vocab_size)
        {
            return Err(Error::Batch(format!(
                "token {bad} is outside the LSTM language model's vocabulary of {}",
                config.vocab_size
            )));
        }
        let mut out = vec![0f64; seqs.len()];
        if seqs.is_empty() {
            return Ok(out);
        }
        let hd = config.hidden;
        let layers = self.cells.len();
        // The root: the empty prefix, `<sos>` in, from a zero state.
        let mut nodes = vec![Node {
            row: 0,
            members: (0..seqs.len()).collect(),
        }];
        let mut inputs = vec![Vocab::SOS];
        let mut h: Vec<Array2<f32>> = vec![Array2::zeros((1, hd)); layers];
        let mut c: Vec<Array2<f32>> = vec![Array2::zeros((1, hd)); layers];
        let mut depth = 0;
        while !nodes.is_empty() {
            let mut x = self.lm.embedding.forward(&inputs)?;
            for (l, (cell, prepared)) in self.cells.iter().enumerate() {
                let (hn, cn) = cell.step(Some(prepared), x.view(), h[l].view(), c[l].view())?;
                h[l] = hn;
                c[l] = cn;
                x = h[l].clone();
            }
            let mut logits = self.lm.output.forward(x.view())?;
            lasr_nn::activation::log_softmax_rows(logits.view_mut());
            // The next step's prefixes: each node's members grouped by their next token.
            let mut next: Vec<Node> = Vec::new();
            let mut next_inputs = Vec::new();
            let mut parents = Vec::new();
            for node in &nodes {
                let lp = logits.row(node.row);
                let mut children: std::collections::BTreeMap<usize, Vec<usize>> =
                    std::collections::BTreeMap::new();
                for &b in &node.members {
                    match seqs[b].get(depth) {
                        Some(&tok) => {
                            out[b] += f64::from(lp[tok]);
                            children.entry(tok).or_default().push(b);
                        }
                        None => out[b] += f64::from(lp[Vocab::EOS]),
                    }
                }
                for (tok, members) in children {
                    next.push(Node {
                        row: next.len(),
                        members,
                    });
                    next_inputs.push(tok);
                    parents.push(node.row);
                }
            }
            for l in 0..layers {
                h[l] = h[l].select(ndarray::Axis(0), &parents);
                c[l] = c[l].select(ndarray::Axis(0), &parents);
            }
            nodes = next;
            inputs = next_inputs;
            depth += 1;
        }
        Ok(out)
    }
}

/// How [`train_rnnlm`] trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RnnLmTrainOptions {
    pub epochs: usize,
    /// Adam's peak learning rate.
    pub learning_rate: f32,
    /// Most tokens (`<eos>` included, padding counted) in one batch.
    pub batch_tokens: usize,
    /// Global gradient-norm clip.
    pub clip_norm: f32,
    /// Linear warm-up steps, then cosine decay to `final_lr_fraction` of the peak.
    pub warmup_steps: u64,
    pub final_lr_fraction: f32,
    /// Seed of the initialisation, the batch order and dropout.
    pub seed: u64,
    /// Pieces each batch is cut into and run in parallel (their gradients summed).
    pub batch_parts: usize,
}

impl Default for RnnLmTrainOptions {
    fn default() -> Self {
        RnnLmTrainOptions {
            epochs: 8,
            learning_rate: 2e-3,
            batch_tokens: 8192,
            clip_norm: 1.0,
            warmup_steps: 200,
            final_lr_fraction: 0.05,
            seed: 1,
            batch_parts: 2,
        }
    }
}

/// Where [`train_rnnlm`] stands, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct RnnLmProgress {
    pub epoch: usize,
    pub step: u64,
    pub total_steps: u64,
    /// Mean negative log-likelihood per token of the last batch, nats.
    pub loss: f64,
    pub learning_rate: f32,
}

/// The end of one epoch.
#[derive(Debug, Clone, Copy)]
pub struct RnnLmEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Training perplexity per token over the epoch (with dropout on).
    pub train_perplexity: f64,
    /// Perplexity per token on the held-out sentences.
    pub valid_perplexity: f64,
}

/// Batches of sentence indices: sentences sorted by length (so padding stays small),
/// cut where another sentence would take the padded size past `batch_tokens`.
fn length_batches(train: &[Vec<usize>], batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.sort_by_key(|&i| (train[i].len(), i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        let width = train[i].len() + 1;
        if !current.is_empty() && (current.len() + 1) * width > batch_tokens {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Summed negative log-likelihood and token count of `seqs`, in batches run in
/// parallel.
pub fn rnnlm_nll(lm: &RnnLm, seqs: &[Vec<usize>], batch_tokens: usize) -> Result<(f64, usize)> {
    let parts: Vec<Result<(f64, usize)>> = length_batches(seqs, batch_tokens)
        .par_iter()
        .map(|b| {
            let s: Vec<&[usize]> = b.iter().map(|&i| seqs[i].as_slice()).collect();
            let lp = lm.log_probs(&s)?;
            Ok((-lp.iter().sum::<f64>(), s.iter().map(|x| x.len() + 1).sum()))
        })
        .collect();
    crate::train::sum_nll(parts)
}

/// Trains `lm` on the sentences `train` (token ids, no `<sos>`/`<eos>`) with Adam,
/// reporting every step to `on_step` and every epoch (with perplexity on `valid`) to
/// `on_epoch`, which may stop training by returning an error. A non-finite loss stops
/// it with [`Error::Model`] before the update that would spread it.
pub fn train_rnnlm(
    lm: &mut RnnLm,
    train: &[Vec<usize>],
    valid: &[Vec<usize>],
    options: &RnnLmTrainOptions,
    mut on_step: impl FnMut(RnnLmProgress),
    mut on_epoch: impl FnMut(&RnnLm, RnnLmEpoch) -> Result<()>,
) -> Result<()> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if options.batch_parts == 0 || options.batch_tokens == 0 {
        return Err(Error::Config(
            "batch_parts and batch_tokens must be at least 1".into(),
        ));
    }
    let mut batches = length_batches(train, options.batch_tokens);
    let total_steps = (batches.len() * options.epochs) as u64;
    let schedule = lasr_nn::LrSchedule {
        peak: options.learning_rate,
        warmup_steps: options.warmup_steps,
        total_steps,
        final_fraction: Some(options.final_lr_fraction),
    };
    let mut adam = lasr_nn::Adam::new(&*lm, options.learning_rate);
    let mut step = 0u64;
    for epoch in 1..=options.epochs {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed ^ ((epoch as u64) << 32));
        batches.shuffle(&mut rng);
        let (mut epoch_nll, mut epoch_count) = (0.0, 0usize);
        for batch in &batches {
            let count: usize = batch.iter().map(|&i| train[i].len() + 1).sum();
            let scale = 1.0 / count as f32;
            let pieces: Vec<&[usize]> = batch
                .chunks(batch.len().div_ceil(options.batch_parts))
                .collect();
            let results: Vec<Result<(RnnLm, f64)>> = pieces
                .par_iter()
                .map(|piece| {
                    let seqs: Vec<&[usize]> = piece.iter().map(|&i| train[i].as_slice()).collect();
                    // One dropout stream per sentence and epoch.
                    let seeds: Vec<u64> = piece
                        .iter()
                        .map(|&i| options.seed ^ ((epoch as u64) << 40) ^ i as u64)
                        .collect();
                    let mut g = lm.zeros_like();
                    let (nll, _) = lm.train_step(&seqs, Some(&seeds), scale, &mut g)?;
                    Ok((g, nll))
                })
                .collect();
            let (mut grads, nll) =
                crate::train::sum_grads(results)?.expect("a batch holds at least one sentence");
            let loss = nll / count as f64;
            if !loss.is_finite() {
                return Err(Error::Model(format!(
                    "the LSTM language model's loss became {loss} at step {} (epoch {epoch}): \
                     stopping before the update; lower the learning rate",
                    step + 1
                )));
            }
            lasr_nn::clip_grad_norm(&mut grads, options.clip_norm)?;
            adam.lr = schedule.at(step);
            adam.step(lm, &grads);
            step += 1;
            epoch_nll += nll;
            epoch_count += count;
            on_step(RnnLmProgress {
                epoch,
                step,
                total_steps,
                loss,
                learning_rate: adam.lr,
            });
        }
        let (vn, vc) = rnnlm_nll(lm, valid, options.batch_tokens)?;
        on_epoch(
            lm,
            RnnLmEpoch {
                epoch,
                train_perplexity: (epoch_nll / epoch_count.max(1) as f64).exp(),
                valid_perplexity: (vn / vc.max(1) as f64).exp(),
            },
        )?;
    }
    Ok(())
}
