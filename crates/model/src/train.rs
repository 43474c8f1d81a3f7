//! The training loop: epochs of length-bucketed batches, Adam with gradient clipping,
//! SpecAugment, validation (teacher-forced loss and greedy CER) after every epoch, and
//! checkpoints written atomically so that a crash or Ctrl-C never loses the last good
//! one. A NaN or infinite gradient stops training with an error naming the tensor.
//!
//! Files in the output directory:
//! - `model.safetensors`: the latest [`ModelFile`] (a complete, runnable model),
//! - `best.safetensors`: the model with the lowest validation CER so far,
//! - `optimizer.safetensors`: Adam's moments and the position in training, to resume,
//! - `log.jsonl`: one JSON object per logged step and per validation.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use lasr_data::{BatchPlan, Dataset};
use lasr_decode::{greedy, wer, ErrorCounts, SearchOptions, Vocab};
use lasr_features::spec_augment_seeded;
use lasr_nn::{checkpoint, clip_grad_norm, Adam, LrSchedule, Module};
use ndarray::s;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file::ModelFile;
use crate::las::Batch;

/// Everything that shapes a training run; saved in the model file's `lasr.info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    /// Global gradient-norm limit.
    pub clip_norm: f32,
    /// Most padded frames per batch (bounds memory and step time).
    pub batch_frames: usize,
    /// Most utterances per batch.
    pub batch_utterances: usize,
    /// Apply the front end's SpecAugment masks to training batches.
    pub spec_augment: bool,
    /// Seeds batch order and masks.
    pub seed: u64,
    /// Validation utterances decoded greedily for CER after each epoch (0 = none).
    pub validate_decode: usize,
    /// Write a log line every this many steps.
    pub log_every: usize,
    /// Epochs (from the first) whose batches run shortest first instead of shuffled: a
    /// curriculum that lets attention learn to align on short utterances.
    pub sorted_epochs: usize,
    /// Each batch is cut into this many groups of utterances that run on separate
    /// threads (see `Las::train_step_parallel`); fixed rather than taken from the core
    /// count so that a run gives the same numbers on any machine.
    pub batch_parts: usize,
    /// Also write `model.safetensors` and the optimiser state every this many steps
    /// within an epoch (0: only after each epoch's validation).
    pub checkpoint_every: usize,
    /// Steps of linear learning-rate warm-up from 0 to `learning_rate`.
    pub warmup_steps: u64,
    /// Cosine decay after warm-up down to this fraction of `learning_rate` at the last
    /// step of the last epoch (absent: constant).
    pub final_lr_fraction: Option<f32>,
    /// Adam's L2 weight decay (PyTorch's `weight_decay`: added to the gradient).
    pub weight_decay: f32,
    /// Also validate every this many steps within an epoch, logged like the epoch's
    /// validations and competing for `best.safetensors` (0: only after each epoch).
    pub validate_every: usize,
    /// Keep the models of the last this many epochs as `epoch-N.safetensors`, for
    /// `lasr average` (0: keep none).
    pub keep_epochs: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 20,
            learning_rate: 1e-3,
            clip_norm: 5.0,
            batch_frames: 12_000,
            batch_utterances: 16,
            spec_augment: true,
            seed: 0,
            validate_decode: 200,
            log_every: 10,
            sorted_epochs: 1,
            batch_parts: 2,
            checkpoint_every: 100,
            warmup_steps: 0,
            final_lr_fraction: None,
            weight_decay: 0.0,
            validate_every: 0,
            keep_epochs: 0,
        }
    }
}

impl TrainOptions {
    /// Training options that go with [`ModelConfig::preset`]'s `small`: the shipped
    /// model's (`assets/train-options.json`), 12 epochs of Adam at a constant 1e-3,
    /// no SpecAugment (warm-up with cosine decay, and SpecAugment, came out worse in
    /// that budget). `reference` is [`TrainOptions::default`].
    pub fn preset(name: &str) -> Option<TrainOptions> {
        match name {
            "reference" => Some(TrainOptions::default()),
            "small" => Some(TrainOptions {
                epochs: 12,
                learning_rate: 1e-3,
                spec_augment: false,
                validate_decode: 100,
                log_every: 5,
                ..TrainOptions::default()
            }),
            _ => None,
        }
    }
}

/// Where a run stands; saved with the optimiser state so a run can resume.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Lowest validation CER so far (none before the first validation that decoded
    /// anything).
    pub best_cer: Option<f64>,
    /// Batches of the current epoch already trained on: an epoch's batch order is a
    /// function of the seed and the epoch, so resuming skips exactly these.
    #[serde(default)]
    pub batch: usize,
    /// Losses summed over those batches, so that an epoch's logged training loss
    /// covers the whole epoch even when the run stopped and resumed inside it.
    #[serde(default)]
    pub epoch_stats: Option<crate::las::StepStats>,
}

/// Validation result of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Validation {
    /// Epochs completed when it ran.
    pub epoch: usize,
    /// Optimiser steps taken when it ran (mid-epoch validations share an epoch).
    pub step: u64,
    /// Teacher-forced loss per token (a CTC-only model's: its CTC loss per character).
    pub loss: f64,
    /// Character and word error rates of greedy decoding on the decoded subset (the
    /// attention decoder's; a CTC-only model's CTC best path).
    pub cer: f64,
    pub wer: f64,
    pub decoded: usize,
    /// With a CTC head: its loss per character, and the CER of its best-path decoding
    /// on the decoded subset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctc_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctc_cer: Option<f64>,
}

/// What a caller hears about while training runs (progress bars, printing).
pub trait Observer {
    /// After every optimiser step: the step's objective, the batches left in the
    /// epoch, and the frames (padding excluded) the step trained on.
    fn step(&mut self, _progress: &Progress, _loss: f64, _batches_left: usize, _frames: usize) {}
    /// After each epoch's validation.
    fn validated(&mut self, _v: &Validation) {}
    /// Asked after every step: `true` saves a checkpoint and returns from [`train`]
    /// (Ctrl-C); the run resumes from exactly that step.
    fn stop_requested(&mut self) -> bool {
        false
    }
}

/// Silent observer.
pub struct Quiet;
impl Observer for Quiet {}

fn tokens(vocab: &Vocab, data: &Dataset, indices: &[usize]) -> Batch {
    let p = data.padded(indices);
    Batch {
        feats: p.feats,
        lengths: p.lengths,
        targets: p.transcripts.iter().map(|t| vocab.encode(t)).collect(),
        seeds: None,
    }
}

/// The noise seed of utterance `b` of step `step`: a function of the step, so a
/// resumed run draws the same masks.
fn noise_seed(seed: u64, step: u64, b: usize) -> u64 {
    let x = seed
        ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (b as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    x.rotate_left(17).wrapping_mul(0xff51_afd7_ed55_8ccd)
}

/// Teacher-forced loss over the whole set and greedy CER/WER over its first
/// `decode` utterances.
pub fn validate(
    model: &ModelFile,
    data: &Dataset,
    decode: usize,
    epoch: usize,
) -> Result<Validation> {
    let plan = BatchPlan {
        max_frames: 20_000,
        max_utterances: 32,
    };
    let mut total: Option<crate::las::StepStats> = None;
    for b in data.batches(plan, 0) {
        let batch = tokens(&model.vocab, data, &b);
        let (stats, _) = model.las.forward(&batch)?;
        match &mut total {
            Some(t) => t.add(&stats),
            None => total = Some(stats),
        }
    }
    let total = total.expect("a dataset is never empty");
    let options = SearchOptions {
        beam_size: 1,
        ..Default::default()
    };
    let (mut chars, mut words) = (ErrorCounts::default(), ErrorCounts::default());
    let mut ctc_chars = ErrorCounts::default();
    let n = decode.min(data.len());
    let weights = model.las.inference_weights(lasr_nn::WeightFormat::F32);
    for u in &data.utterances[..n] {
        let decoder = model.las.encode(&weights, u.feats.view())?;
        let reference = model.vocab.normalize_transcript(&u.transcript);
        let mut ctc_hyp = None;
        if let Some(logits) = decoder.ctc_logits()? {
            let (labels, _) = lasr_nn::ctc_greedy(logits.view(), model.las.config.blank);
            let hyp = model.vocab.decode(&labels);
            ctc_chars += lasr_decode::cer(&reference, &hyp);
            ctc_hyp = Some(hyp);
        }
        // A CTC-only model's speller is untrained: its decoding is the CTC best path.
        let hyp = match ctc_hyp.filter(|_| !model.las.config.trains_speller()) {
            Some(hyp) => hyp,
            None => model.vocab.decode(&greedy(&decoder, &options)?.tokens),
        };
        chars += lasr_decode::cer(&reference, &hyp);
        words += wer(&reference, &hyp);
    }
    let has_ctc = model.las.config.has_ctc();
    Ok(Validation {
        epoch,
        step: 0,
        loss: total.loss(),
        cer: if n == 0 { f64::NAN } else { chars.rate() },
        wer: if n == 0 { f64::NAN } else { words.rate() },
        decoded: n,
        ctc_loss: has_ctc.then(|| total.ctc_mean()),
        ctc_cer: (has_ctc && n > 0).then(|| ctc_chars.rate()),
    })
}

fn log_line(log: &mut std::fs::File, path: &Path, value: serde_json::Value) -> Result<()> {
    writeln!(log, "{value}")
        .map_err(|e| Error::Model(format!("{}: cannot write: {e}", path.display())))
}

/// Writes the latest model, then the optimiser state with `progress`, each atomically.
fn checkpoint(
    model: &ModelFile,
    adam: &Adam<crate::las::Las>,
    progress: &Progress,
    out: &Path,
) -> Result<()> {
    // Model first, then optimiser: if a crash falls between them, resuming repeats
    // the steps since the previous checkpoint's optimiser state on a newer model,
    // which only perturbs training a little; never the other way round.
    model.save(&out.join("model.safetensors"))?;
    let mut meta = HashMap::new();
    meta.insert(
        "lasr.progress".to_string(),
        serde_json::to_string(progress).expect("plain struct"),
    );
    let bytes = checkpoint::to_bytes_parts(&[("m", &adam.m), ("v", &adam.v)], &meta)?;
    checkpoint::write_atomic(&out.join("optimizer.safetensors"), &bytes)?;
    Ok(())
}

/// Deletes `out/epoch-N.safetensors` for every `N <= last` (all of them, so a run
/// resumed with a smaller `keep_epochs` keeps no more than it asks for).
fn prune_epochs(out: &Path, last: usize) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::Model(format!("{}: {e}", p.display()));
    for entry in std::fs::read_dir(out).map_err(|e| io(out, e))? {
        let path = entry.map_err(|e| io(out, e))?.path();
        let epoch = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("epoch-")?.strip_suffix(".safetensors"))
            .and_then(|n| n.parse::<usize>().ok());
        if epoch.is_some_and(|e| e <= last) {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

/// Saves `model` as the best so far when `v` beats the best CER.
fn keep_if_best(
    model: &ModelFile,
    v: &Validation,
    progress: &mut Progress,
    best_path: &Path,
) -> Result<()> {
    // A NaN CER (nothing decoded) never counts as a new best.
    if !v.cer.is_nan() && progress.best_cer.is_none_or(|b| v.cer < b) {
        progress.best_cer = Some(v.cer);
        model.save(best_path)?;
    }
    Ok(())
}

/// How [`train`] ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Finish {
    /// Every epoch ran; the last validation.
    Done(Option<Validation>),
    /// The observer asked to stop; a checkpoint at this step was written.
    Stopped(Progress),
}

fn refuse_ensemble(model: &ModelFile) -> Result<()> {
    if model.members.is_empty() {
        return Ok(());
    }
    // Only the main model would learn, while every checkpoint carried the old members
    // and validation read the main model alone.
    Err(Error::Model(format!(
        "a CTC ensemble of {} models cannot be trained: train one of its models",
        model.members.len() + 1
    )))
}

/// Trains `model` on `train`, validating on `valid`, writing into `out` (see the module
/// docs). With `resume`, continues from `out/optimizer.safetensors` and
/// `out/model.safetensors` at the step where they were written.
pub fn train(
    mut model: ModelFile,
    train: &Dataset,
    valid: &Dataset,
    options: &TrainOptions,
    out: &Path,
    resume: bool,
    observer: &mut dyn Observer,
) -> Result<Finish> {
    refuse_ensemble(&model)?;
    let io = |p: &Path, e: std::io::Error| Error::Model(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let model_path = out.join("model.safetensors");
    let best_path = out.join("best.safetensors");
    let opt_path = out.join("optimizer.safetensors");
    let log_path = out.join("log.jsonl");
    let mut adam = Adam::new(&model.las, options.learning_rate);
    let mut progress = Progress {
        epoch: 0,
        step: 0,
        best_cer: None,
        batch: 0,
        epoch_stats: None,
    };
    if resume {
        model = ModelFile::load(&model_path)?;
        let bytes = std::fs::read(&opt_path).map_err(|e| io(&opt_path, e))?;
        adam = Adam::new(&model.las, options.learning_rate);
        let meta =
            checkpoint::from_bytes_parts(&bytes, &mut [("m", &mut adam.m), ("v", &mut adam.v)])
                .map_err(|e| Error::Model(format!("{}: {e}", opt_path.display())))?;
        progress = serde_json::from_str(
            meta.get("lasr.progress")
                .map(String::as_str)
                .unwrap_or("null"),
        )
        .map_err(|e| Error::Model(format!("{}: lasr.progress: {e}", opt_path.display())))?;
        adam.t = progress.step;
        refuse_ensemble(&model)
            .map_err(|e| Error::Model(format!("{}: {e}", model_path.display())))?;
    }
    // Checkpoints are resumed from and trained on: a model started (or resumed) from
    // a half-precision file is written back in full precision.
    model.storage = lasr_nn::Storage::F32;
    adam.weight_decay = options.weight_decay;
    if !model.las.config.trains_speller() {
        // CTC alone never reaches the speller: only weight decay would move it.
        adam.frozen = vec!["speller.".into()];
    }
    model.info = serde_json::json!({"train_options": options, "train_utterances": train.len(), "train_frames": train.frames()});
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| io(&log_path, e))?;
    let start = Instant::now();
    let mut last = None;
    let plan = BatchPlan {
        max_frames: options.batch_frames,
        max_utterances: options.batch_utterances,
    };
    // Shuffling never changes how many batches an epoch has, so the first epoch's
    // count fixes the schedule's length.
    let schedule = LrSchedule {
        peak: options.learning_rate,
        warmup_steps: options.warmup_steps,
        total_steps: (train.batches(plan, options.seed).len() * options.epochs) as u64,
        final_fraction: options.final_lr_fraction,
    };
    while progress.epoch < options.epochs {
        let epoch = progress.epoch;
        let mut batches = train.batches(plan, options.seed.wrapping_add(epoch as u64));
        if epoch < options.sorted_epochs {
            batches.sort_by_key(|b| {
                b.iter()
                    .map(|&i| train.utterances[i].feats.nrows())
                    .max()
                    .unwrap_or(0)
            });
        }
        let total = batches.len();
        for (k, indices) in batches.iter().enumerate().skip(progress.batch) {
            let mut batch = tokens(&model.vocab, train, indices);
            let cfg = &model.las.config;
            if cfg.dropout > 0.0 || cfg.sampling_rate > 0.0 {
                batch.seeds = Some(
                    (0..indices.len())
                        .map(|b| noise_seed(options.seed, progress.step, b))
                        .collect(),
                );
            }
            if options.spec_augment {
                for (b, &len) in batch.lengths.clone().iter().enumerate() {
                    let seed = options.seed ^ (progress.step << 8) ^ b as u64;
                    let mut u = batch.feats.slice_mut(s![..len, b, ..]);
                    spec_augment_seeded(&mut u, &model.front_end.features.spec_augment, seed);
                }
            }
            let mut grads = model.las.zeros_like();
            let stats = model
                .las
                .train_step_parallel(&batch, &mut grads, options.batch_parts)?;
            let norm = clip_grad_norm(&mut grads, options.clip_norm)?;
            adam.lr = schedule.at(progress.step);
            adam.step(&mut model.las, &grads);
            progress.step += 1;
            match &mut progress.epoch_stats {
                Some(t) => t.add(&stats),
                None => progress.epoch_stats = Some(stats),
            }
            let frames = batch.lengths.iter().sum();
            observer.step(&progress, stats.objective(), total - k - 1, frames);
            if progress
                .step
                .is_multiple_of(options.log_every.max(1) as u64)
            {
                let mut line = serde_json::json!({"epoch": epoch, "step": progress.step,
                    "loss": stats.loss(), "objective": stats.objective(),
                    "grad_norm": norm, "lr": adam.lr, "utterances": indices.len(), "seconds": start.elapsed().as_secs_f64()});
                if model.las.config.has_ctc() {
                    line["ctc"] = serde_json::json!(stats.ctc_mean());
                    line["ctc_infeasible"] = serde_json::json!(stats.ctc_infeasible);
                }
                log_line(&mut log, &log_path, line)?;
            }
            progress.batch = k + 1;
            let every = options.checkpoint_every as u64;
            if every > 0 && progress.step.is_multiple_of(every) && k + 1 < total {
                checkpoint(&model, &adam, &progress, out)?;
            }
            let every = options.validate_every as u64;
            if every > 0 && progress.step.is_multiple_of(every) && k + 1 < total {
                let mut v = validate(&model, valid, options.validate_decode, progress.epoch)?;
                v.step = progress.step;
                log_line(
                    &mut log,
                    &log_path,
                    serde_json::json!({"epoch": progress.epoch, "step": progress.step,
                        "valid": v, "seconds": start.elapsed().as_secs_f64()}),
                )?;
                keep_if_best(&model, &v, &mut progress, &best_path)?;
                // The new best CER lives in the optimiser file's progress.
                checkpoint(&model, &adam, &progress, out)?;
                observer.validated(&v);
            }
            // After this step's validation, so a stopped and resumed run validates
            // exactly where an uninterrupted one does.
            if observer.stop_requested() {
                checkpoint(&model, &adam, &progress, out)?;
                return Ok(Finish::Stopped(progress));
            }
        }
        progress.epoch += 1;
        progress.batch = 0;
        let epoch_stats = progress.epoch_stats.take();
        let mut v = validate(&model, valid, options.validate_decode, progress.epoch)?;
        v.step = progress.step;
        log_line(
            &mut log,
            &log_path,
            serde_json::json!({"epoch": progress.epoch, "step": progress.step,
                "train_loss": epoch_stats.as_ref().map(|t| t.loss()),
                "train_ctc": epoch_stats.as_ref().filter(|t| t.ctc_weight > 0.0).map(|t| t.ctc_mean()), "valid": v, "seconds": start.elapsed().as_secs_f64()}),
        )?;
        keep_if_best(&model, &v, &mut progress, &best_path)?;
        if options.keep_epochs > 0 {
            model.save(&out.join(format!("epoch-{}.safetensors", progress.epoch)))?;
            prune_epochs(out, progress.epoch.saturating_sub(options.keep_epochs))?;
        }
        checkpoint(&model, &adam, &progress, out)?;
        observer.validated(&v);
        last = Some(v);
    }
    Ok(Finish::Done(last))
}

/// The summed `(negative log-likelihood, count)` of a batch's parts (as the LSTM LM's
/// and the ensemble speller's validation run them), or the first part's error.
pub(crate) fn sum_nll(parts: Vec<Result<(f64, usize)>>) -> Result<(f64, usize)> {
    let mut total = (0.0, 0);
    for p in parts {
        let (nll, n) = p?;
        total.0 += nll;
        total.1 += n;
    }
    Ok(total)
}

/// The gradients of a batch's parts summed into the first part's, with their summed
/// losses (as the LSTM LM's and the ensemble speller's training steps run them), or
/// the first part's error; `None` for no parts.
pub(crate) fn sum_grads<M: Module>(parts: Vec<Result<(M, f64)>>) -> Result<Option<(M, f64)>> {
    let mut total: Option<(M, f64)> = None;
    for p in parts {
        let (g, loss) = p?;
        match &mut total {
            Some((acc, sum)) => {
                acc.add_from(&g);
                *sum += loss;
            }
            None => total = Some((g, loss)),
        }
    }
    Ok(total)
}
