//! A speller that listens to every model of an ensemble, for re-ranking.
//!
//! An ensemble file mixes the CTC distributions of several listeners, but only the
//! main model's listener feeds an attention decoder: re-ranking the CTC search's n-best
//! list with it hears one model of the ensemble. The ensemble speller hears them all.
//! Each frame's listener states of the main model and of every member, concatenated
//! (`[U, D_main + D_1 + ... + D_k]`, in the file's order), go through a linear
//! projection `proj` down to the main model's width `D_main`, then through a speller
//! of the main model's shapes.
//!
//! [`EnsembleSpeller::from_file`] makes the projection the identity on the main
//! model's states (zero on the members') and copies the main speller, so before any
//! training it scores exactly as the main speller does and training starts from an
//! attention that already aligns. Training ([`train_ensemble_speller`]) freezes every
//! listener: their states are computed once ([`ModelFile::listen_all`]) and only the
//! projection and the speller learn, so an epoch costs the speller's steps alone.
//!
//! Parameter names: `proj.weight` `[D_main, D_all]`, `proj.bias`, then the speller's
//! names as in [`crate::Las`] under `speller.`; in a model file all of them sit under
//! `ensemble_speller.`.

use half::f16;
use lasr_nn::module::join;
use lasr_nn::{softmax_cross_entropy_smoothed, Dropout, Linear, Module};
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMutD, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::file::ModelFile;
use crate::infer::InferenceWeights;
use crate::las::{teacher_forcing, Noise, Speller};

/// Dropout site of the projection's input (the frozen listener states).
const SITE_INPUT: u64 = 300;

/// The projection and speller (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleSpeller {
    /// The speller's sizes and training-time rates: the main model's config, whose
    /// listener width is the projection's output width (its other listener fields
    /// are not used).
    pub config: ModelConfig,
    /// `[D_main, D_all]`.
    pub proj: Linear,
    pub speller: Speller,
}

impl Module for EnsembleSpeller {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, ArrayViewD<'a, f32>)) {
        self.proj.visit(&join(prefix, "proj"), f);
        self.speller.visit(&join(prefix, "speller"), f);
    }

    fn visit_mut<'a>(
        &'a mut self,
        prefix: &str,
        f: &mut dyn FnMut(String, ArrayViewMutD<'a, f32>),
    ) {
        self.proj.visit_mut(&join(prefix, "proj"), f);
        self.speller.visit_mut(&join(prefix, "speller"), f);
    }

    fn zeros_like(&self) -> Self {
        EnsembleSpeller {
            config: self.config.clone(),
            proj: self.proj.zeros_like(),
            speller: self.speller.zeros_like(),
        }
    }
}

/// One utterance's frozen listener states and transcript, for training.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Listener states `[U, D_all]`, row-major, in half precision (23.6 h of speech,
    /// the 7.8 h set speed-perturbed, at 25 frames per second and 1,856 states per
    /// frame is 7.9 GB so).
    pub states: Vec<f16>,
    /// `U`.
    pub frames: usize,
    /// Token ids, without `<sos>`/`<eos>`.
    pub targets: Vec<usize>,
}

impl Encoded {
    /// Stores `states` `[U, D_all]` with `targets`.
    pub fn new(states: ArrayView2<f32>, targets: Vec<usize>) -> Encoded {
        Encoded {
            states: states.iter().map(|&x| f16::from_f32(x)).collect(),
            frames: states.nrows(),
            targets,
        }
    }
}

impl ModelFile {
    /// Width of [`ModelFile::listen_all`]'s states: the main model's listener width
    /// plus every member's.
    pub fn all_listeners_dim(&self) -> usize {
        self.las.config.listener_dim()
            + self
                .members
                .iter()
                .map(|m| m.config.listener_dim())
                .sum::<usize>()
    }

    /// Listener states of the main model and of every member, side by side: normalised
    /// features `[T, F]` -> `[U, D_all]` ([`ModelFile::all_listeners_dim`]). `weights`
    /// are this model's [`ModelFile::inference_weights`].
    pub fn listen_all(
        &self,
        weights: &InferenceWeights,
        feats: ArrayView2<f32>,
    ) -> Result<Array2<f32>> {
        let main = self.las.encode(weights, feats)?;
        let mut parts = vec![main.listener_states().to_owned()];
        parts.extend(self.member_states(weights, feats)?);
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(1), &views)
            .map_err(|e| Error::Model(format!("members' listener states do not line up: {e}")))
    }
}

impl EnsembleSpeller {
    /// The projection as the identity on `file`'s main listener states and a copy of
    /// its speller: scores as the main speller does until trained.
    pub fn from_file(file: &ModelFile) -> EnsembleSpeller {
        let d = file.las.config.listener_dim();
        let d_all = file.all_listeners_dim();
        let mut weight = Array2::zeros((d, d_all));
        for i in 0..d {
            weight[[i, i]] = 1.0;
        }
        EnsembleSpeller {
            config: file.las.config.clone(),
            proj: Linear {
                weight,
                bias: Some(ndarray::Array1::zeros(d)),
            },
            speller: file.las.speller.clone(),
        }
    }

    /// Freshly initialised, of `config`'s speller sizes reading `d_all` states per
    /// frame (weights to be loaded).
    pub(crate) fn new(config: ModelConfig, d_all: usize, rng: &mut impl rand::Rng) -> Self {
        EnsembleSpeller {
            proj: Linear::new(d_all, config.listener_dim(), true, rng),
            speller: Speller::new(&config, rng),
            config,
        }
    }

    /// Width of the states it reads, `D_all`.
    pub fn input_dim(&self) -> usize {
        self.proj.input_dim()
    }

    /// The projected states `[U, D_main]` of one utterance's `[U, D_all]`.
    pub fn project(&self, states: ArrayView2<f32>) -> Result<Array2<f32>> {
        Ok(self.proj.forward(states)?)
    }

    /// Projected states `[U, B, D_main]` of padded states `[U, B, D_all]`.
    fn project3(&self, x: ArrayView3<f32>) -> Result<Array3<f32>> {
        let (u, b, d_all) = x.dim();
        let flat = x.to_shape((u * b, d_all)).expect("any layout reshapes");
        let y = self.proj.forward(flat.view())?;
        Ok(y.into_shape_with_order((u, b, self.proj.output_dim()))
            .expect("row-major"))
    }

    /// Summed negative log-likelihood (`<eos>` included) and token count of one batch;
    /// with `grads`, its gradient times `scale` is added into them (`scale` = 1 /
    /// the tokens of a whole batch cut into parts gives the batch's mean). `x` are the
    /// padded listener states `[U, B, D_all]`, `lengths` `[B]` their live frames,
    /// `targets` `[B]` the transcripts (no `<sos>`/`<eos>`). `noise` = (seeds `[B]`,
    /// p) turns on the training noise: dropout with probability p on `x`, and the
    /// config's dropout on the speller's output-layer input and scheduled sampling.
    pub fn train_step(
        &self,
        x: Array3<f32>,
        lengths: &[usize],
        targets: &[Vec<usize>],
        noise: Option<(&[u64], f32)>,
        grads: Option<(&mut EnsembleSpeller, f32)>,
    ) -> Result<(f64, usize)> {
        let (u, b, d_all) = x.dim();
        if d_all != self.input_dim()
            || lengths.len() != b
            || targets.len() != b
            || noise.is_some_and(|(s, _)| s.len() != b)
            || lengths.iter().any(|&l| l == 0 || l > u)
        {
            return Err(Error::Batch(format!(
                "ensemble speller: states [{u}, {b}, {d_all}] (it reads {}), {} lengths (each 1 to {u}), {} transcripts, {} noise seeds",
                self.input_dim(),
                lengths.len(),
                targets.len(),
                noise.map_or(b, |(s, _)| s.len())
            )));
        }
        let seeds = noise;
        let mut x = x;
        if let Some((seeds, p)) = seeds.filter(|(_, p)| *p > 0.0) {
            x *= &Dropout { p }.mask(x.dim(), seeds, SITE_INPUT);
        }
        let h = self.project3(x.view())?;
        let (inputs, scored) = teacher_forcing(&self.config, targets);
        let noise = seeds.map(|(seeds, _)| Noise {
            seeds,
            dropout: self.config.dropout,
            sampling_rate: self.config.sampling_rate,
        });
        let (logits, cache) = self.speller.forward(h.view(), lengths, &inputs, noise)?;
        let (steps, b, v) = logits.dim();
        let flat = logits
            .view()
            .into_shape_with_order((steps * b, v))
            .expect("row-major");
        let ce = softmax_cross_entropy_smoothed(flat, &scored, self.config.label_smoothing)?;
        if let Some((g, scale)) = grads {
            // `ce.grad` is of the mean over this batch's tokens; the caller wants the
            // sum scaled by `scale`.
            let dlogits = ce
                .grad
                .into_shape_with_order((steps, b, v))
                .expect("row-major")
                * (scale * ce.count as f32);
            let dh = self
                .speller
                .backward(&cache, h.view(), dlogits.view(), &mut g.speller)?;
            let (u, b, d_all) = x.dim();
            let xf = x.to_shape((u * b, d_all)).expect("any layout reshapes");
            let dy = dh
                .to_shape((u * b, self.proj.output_dim()))
                .expect("any layout reshapes");
            self.proj.backward(xf.view(), dy.view(), &mut g.proj)?;
        }
        Ok((ce.sum, ce.count))
    }

    /// Log-probability (natural log, `<eos>` included) of each transcript `targets`
    /// `[B]` given one utterance's states `[U, D_all]` each (`states` `[B]`), teacher
    /// forced, without noise.
    pub fn log_probs(
        &self,
        states: &[ArrayView2<f32>],
        targets: &[Vec<usize>],
    ) -> Result<Vec<f64>> {
        if states.len() != targets.len() {
            return Err(Error::Batch(format!(
                "ensemble speller: {} utterances' states but {} transcripts",
                states.len(),
                targets.len()
            )));
        }
        states
            .iter()
            .zip(targets)
            .map(|(x, t)| {
                let x3 = x.to_owned().insert_axis(Axis(1));
                let (nll, _) =
                    self.train_step(x3, &[x.nrows()], std::slice::from_ref(t), None, None)?;
                Ok(-nll)
            })
            .collect()
    }

    fn check(&self, data: &[Encoded]) -> Result<()> {
        let d_all = self.input_dim();
        for (i, e) in data.iter().enumerate() {
            if e.frames == 0 || e.states.len() != e.frames * d_all {
                return Err(Error::Batch(format!(
                    "utterance {i}: {} states for {} frames of {d_all}",
                    e.states.len(),
                    e.frames
                )));
            }
            if let Some(&bad) = e.targets.iter().find(|&&t| t >= self.config.vocab_size) {
                return Err(Error::Batch(format!(
                    "utterance {i}: token {bad} is outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
        }
        Ok(())
    }
}

/// Utterances `indices` of `data` padded to the longest: states `[U, B, D_all]`,
/// lengths `[B]`, transcripts `[B]`.
fn padded(
    data: &[Encoded],
    indices: &[usize],
    d_all: usize,
) -> (Array3<f32>, Vec<usize>, Vec<Vec<usize>>) {
    let u = indices.iter().map(|&i| data[i].frames).max().unwrap_or(0);
    let mut x = Array3::zeros((u, indices.len(), d_all));
    for (b, &i) in indices.iter().enumerate() {
        let e = &data[i];
        let mut dst = x.slice_mut(s![..e.frames, b, ..]);
        for (d, s) in dst.iter_mut().zip(&e.states) {
            *d = s.to_f32();
        }
    }
    let lengths = indices.iter().map(|&i| data[i].frames).collect();
    let targets = indices.iter().map(|&i| data[i].targets.clone()).collect();
    (x, lengths, targets)
}

/// Batches of utterance indices: sorted by frames (equal lengths in an order drawn
/// from `seed`), cut where the padded size would pass `max_frames` or the count
/// `max_utterances`.
fn frame_batches(
    data: &[Encoded],
    max_frames: usize,
    max_utterances: usize,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| {
        (
            data[i].frames,
            lasr_nn::dropout::uniform(seed, 0, i as u64).to_bits(),
            i,
        )
    });
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        let width = data[i].frames;
        if !current.is_empty()
            && ((current.len() + 1) * width > max_frames || current.len() >= max_utterances)
        {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// How [`train_ensemble_speller`] trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpellerOptions {
    pub epochs: usize,
    /// Adam's peak learning rate.
    pub learning_rate: f32,
    /// Most padded listener frames in one batch.
    pub batch_frames: usize,
    pub batch_utterances: usize,
    pub clip_norm: f32,
    /// Linear warm-up steps, then cosine decay to `final_lr_fraction` of the peak.
    pub warmup_steps: u64,
    pub final_lr_fraction: f32,
    /// Dropout on the speller's output-layer input.
    pub dropout: f32,
    /// Dropout on the frozen listener states the projection reads.
    pub input_dropout: f32,
    pub label_smoothing: f32,
    /// Scheduled sampling rate.
    pub sampling_rate: f32,
    /// Seed of the batch order and the noise.
    pub seed: u64,
    /// Pieces each batch is cut into and run in parallel.
    pub batch_parts: usize,
    /// Train the projection alone, the speller kept as it is (the main speller's,
    /// as made by [`EnsembleSpeller::from_file`]).
    #[serde(default)]
    pub projection_only: bool,
}

impl Default for EnsembleSpellerOptions {
    fn default() -> Self {
        EnsembleSpellerOptions {
            epochs: 6,
            learning_rate: 3e-4,
            batch_frames: 4000,
            batch_utterances: 16,
            clip_norm: 5.0,
            warmup_steps: 100,
            final_lr_fraction: 0.05,
            dropout: 0.1,
            input_dropout: 0.1,
            label_smoothing: 0.0,
            sampling_rate: 0.0,
            seed: 1,
            batch_parts: 2,
            projection_only: false,
        }
    }
}

impl EnsembleSpellerOptions {
    fn validate(&self) -> Result<()> {
        let unit = |x: f32| (0.0..1.0).contains(&x);
        if self.batch_parts == 0 || self.batch_frames == 0 || self.batch_utterances == 0 {
            return Err(Error::Config(
                "batch_parts, batch_frames and batch_utterances must be at least 1".into(),
            ));
        }
        if !(unit(self.dropout)
            && unit(self.input_dropout)
            && unit(self.label_smoothing)
            && (0.0..=1.0).contains(&self.sampling_rate))
        {
            return Err(Error::Config(format!(
                "dropout {}, input_dropout {} and label_smoothing {} must lie in [0, 1), sampling_rate {} in [0, 1]",
                self.dropout, self.input_dropout, self.label_smoothing, self.sampling_rate
            )));
        }
        if !(self.clip_norm.is_finite()
            && self.clip_norm > 0.0
            && (0.0..=1.0).contains(&self.final_lr_fraction))
        {
            return Err(Error::Config(format!(
                "clip_norm {} must be positive and final_lr_fraction {} in [0, 1]",
                self.clip_norm, self.final_lr_fraction
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::Config(format!(
                "learning_rate {} must be positive",
                self.learning_rate
            )));
        }
        Ok(())
    }
}

/// Where [`train_ensemble_speller`] stands, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct SpellerProgress {
    pub epoch: usize,
    pub step: u64,
    pub total_steps: u64,
    /// Mean negative log-likelihood per token of the last batch, nats.
    pub loss: f64,
    pub learning_rate: f32,
    /// Listener frames in the last batch.
    pub frames: usize,
}

/// The end of one epoch.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SpellerEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Mean loss per token over the epoch (with the training noise on).
    pub train_loss: f64,
    /// Mean negative log-likelihood per token on the held-out utterances.
    pub valid_loss: f64,
}

/// Summed negative log-likelihood and token count of `data`, without noise.
pub fn ensemble_speller_nll(
    es: &EnsembleSpeller,
    data: &[Encoded],
    options: &EnsembleSpellerOptions,
) -> Result<(f64, usize)> {
    es.check(data)?;
    let d_all = es.input_dim();
    let results: Vec<Result<(f64, usize)>> =
        frame_batches(data, options.batch_frames, options.batch_utterances, 0)
            .par_iter()
            .map(|b| {
                let (x, lengths, targets) = padded(data, b, d_all);
                es.train_step(x, &lengths, &targets, None, None)
            })
            .collect();
    crate::train::sum_nll(results)
}

/// Trains `es` (its projection and speller; the listeners are frozen in `train`'s
/// states) with Adam on `train`, reporting every step to `on_step` and every epoch,
/// with the loss on `valid`, to `on_epoch`, which may stop training by returning an
/// error. The options' rates replace the config's. A non-finite loss stops training
/// with [`Error::Model`] before the update that would spread it.
pub fn train_ensemble_speller(
    es: &mut EnsembleSpeller,
    train: &[Encoded],
    valid: &[Encoded],
    options: &EnsembleSpellerOptions,
    mut on_step: impl FnMut(SpellerProgress),
    mut on_epoch: impl FnMut(&EnsembleSpeller, SpellerEpoch) -> Result<()>,
) -> Result<()> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    options.validate()?;
    es.check(train)?;
    es.check(valid)?;
    es.config.dropout = options.dropout;
    es.config.label_smoothing = options.label_smoothing;
    es.config.sampling_rate = options.sampling_rate;
    let d_all = es.input_dim();
    // Each epoch forms its own batches (below); their number depends only on the
    // lengths, so the schedule can count them now.
    let total_steps = (frame_batches(train, options.batch_frames, options.batch_utterances, 0)
        .len()
        * options.epochs) as u64;
    let schedule = lasr_nn::LrSchedule {
        peak: options.learning_rate,
        warmup_steps: options.warmup_steps,
        total_steps,
        final_fraction: Some(options.final_lr_fraction),
    };
    let mut adam = lasr_nn::Adam::new(&*es, options.learning_rate);
    if options.projection_only {
        adam.frozen = vec!["speller.".into()];
    }
    let mut step = 0u64;
    for epoch in 1..=options.epochs {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(options.seed ^ ((epoch as u64) << 32));
        // Utterances of equal length meet in other batches each epoch.
        let mut batches = frame_batches(
            train,
            options.batch_frames,
            options.batch_utterances,
            options.seed ^ epoch as u64,
        );
        batches.shuffle(&mut rng);
        let (mut epoch_loss, mut epoch_count) = (0.0, 0usize);
        for batch in &batches {
            let count: usize = batch.iter().map(|&i| train[i].targets.len() + 1).sum();
            let scale = 1.0 / count as f32;
            let pieces: Vec<&[usize]> = batch
                .chunks(batch.len().div_ceil(options.batch_parts))
                .collect();
            let model = &*es;
            let results: Vec<Result<(EnsembleSpeller, f64)>> = pieces
                .par_iter()
                .map(|piece| {
                    let (x, lengths, targets) = padded(train, piece, d_all);
                    // One noise stream per utterance and epoch.
                    let seeds: Vec<u64> = piece
                        .iter()
                        .map(|&i| options.seed ^ ((epoch as u64) << 40) ^ i as u64)
                        .collect();
                    let mut g = model.zeros_like();
                    let (loss, _) = model.train_step(
                        x,
                        &lengths,
                        &targets,
                        Some((&seeds, options.input_dropout)),
                        Some((&mut g, scale)),
                    )?;
                    Ok((g, loss))
                })
                .collect();
            let (mut grads, loss_sum) =
                crate::train::sum_grads(results)?.expect("a batch holds at least one utterance");
            let loss = loss_sum / count as f64;
            if !loss.is_finite() {
                return Err(Error::Model(format!(
                    "the ensemble speller's loss became {loss} at step {} (epoch {epoch}): \
                     stopping before the update; lower the learning rate",
                    step + 1
                )));
            }
            if options.projection_only {
                // The frozen speller's gradients only carried dL/dh to the projection;
                // they must not count in the clipping norm.
                grads.speller = grads.speller.zeros_like();
            }
            lasr_nn::clip_grad_norm(&mut grads, options.clip_norm)?;
            adam.lr = schedule.at(step);
            adam.step(es, &grads);
            step += 1;
            epoch_loss += loss_sum;
            epoch_count += count;
            on_step(SpellerProgress {
                epoch,
                step,
                total_steps,
                loss,
                learning_rate: adam.lr,
                frames: batch.iter().map(|&i| train[i].frames).sum(),
            });
        }
        let (vn, vc) = ensemble_speller_nll(es, valid, options)?;
        on_epoch(
            es,
            SpellerEpoch {
                epoch,
                train_loss: epoch_loss / epoch_count.max(1) as f64,
                valid_loss: vn / vc.max(1) as f64,
            },
        )?;
    }
    Ok(())
}
