//! Accuracy and speed of a model on a transcribed corpus, for several decoding
//! settings side by side: WER and CER with their substitutions, deletions and
//! insertions, and the real-time factor.
//!
//! Scoring: reference and hypothesis are both upper-cased, every character that is not
//! a letter, a digit, an apostrophe or white space is dropped, and runs of white space
//! become one space; then standard Levenshtein alignment over words (WER) and over
//! characters including spaces (CER), summed over the corpus before dividing.
//!
//! Timing: each utterance's features are computed once and timed; a setting's time for
//! it is that plus its own decoding. The real-time factor is the sum of those times
//! over the sum of audio durations, as one thread sees it (utterances run in parallel
//! on the rayon pool, one per thread), so it does not depend on the core count.

use std::path::PathBuf;
use std::time::Instant;

use lasr_data::Entry;
use lasr_decode::{cer, wer, ErrorCounts};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::file::ModelFile;
use crate::infer::InferenceWeights;
use crate::transcribe::DecodeOptions;
use lasr_nn::WeightFormat;

/// A named way to decode.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSetting {
    pub name: String,
    pub options: DecodeOptions,
}

/// One setting's result on one utterance.
#[derive(Debug, Clone, Serialize)]
pub struct SettingResult {
    pub setting: String,
    pub text: String,
    pub words: ErrorCounts,
    pub chars: ErrorCounts,
    /// Features plus decoding, seconds.
    pub seconds: f64,
}

/// One utterance.
#[derive(Debug, Clone, Serialize)]
pub struct UtteranceReport {
    pub id: String,
    pub audio: PathBuf,
    /// Seconds of audio.
    pub duration: f64,
    /// The reference as scored.
    pub reference: String,
    pub results: Vec<SettingResult>,
}

/// One setting over the corpus.
#[derive(Debug, Clone, Serialize)]
pub struct SettingSummary {
    pub name: String,
    pub options: DecodeOptions,
    /// Order and weight of the fused language model, if any.
    pub lm: Option<(usize, f32)>,
    pub wer: f64,
    pub cer: f64,
    pub words: ErrorCounts,
    pub chars: ErrorCounts,
    /// Thread-seconds spent, features included.
    pub seconds: f64,
    pub real_time_factor: f64,
}

/// A corpus skipped file.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSkip {
    pub id: String,
    pub error: String,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub utterances: usize,
    pub audio_hours: f64,
    /// Wall-clock seconds of the whole run.
    pub wall_seconds: f64,
    pub threads: usize,
    /// Storage of the packed recurrent weights (`f32`, `bf16` or `int8`).
    pub weights: String,
    pub settings: Vec<SettingSummary>,
    pub skipped: Vec<BenchSkip>,
    pub per_utterance: Vec<UtteranceReport>,
}

/// Upper-cased, letters/digits/apostrophes only, single spaces (see the module docs).
pub fn normalize_for_scoring(text: &str) -> String {
    let kept: String = text
        .chars()
        .flat_map(char::to_uppercase)
        .filter(|c| c.is_alphanumeric() || *c == '\'' || c.is_whitespace())
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn one(
    model: &ModelFile,
    weights: &InferenceWeights,
    front: &mut lasr_features::FrontEnd,
    entry: &Entry,
    settings: &[BenchSetting],
) -> Result<UtteranceReport> {
    let start = Instant::now();
    // Whole recordings, or a Kaldi segment cut out of one.
    let audio = entry.load_audio()?;
    let duration = audio.duration_secs();
    let feats = front
        .audio_features(audio)
        .map_err(|e| e.in_file(&entry.audio))?;
    let feature_seconds = start.elapsed().as_secs_f64();
    let reference = normalize_for_scoring(&entry.transcript);
    let mut results = Vec::with_capacity(settings.len());
    for s in settings {
        let t = model.transcribe_features(weights, feats.view(), &s.options)?;
        let text = normalize_for_scoring(&t.text);
        results.push(SettingResult {
            setting: s.name.clone(),
            words: wer(&reference, &text),
            chars: cer(&reference, &text),
            text,
            seconds: feature_seconds + f64::from(t.seconds),
        });
    }
    Ok(UtteranceReport {
        id: entry.id.clone(),
        audio: entry.audio.clone(),
        duration,
        reference,
        results,
    })
}

/// Decodes every entry with every setting, the packed weights stored in `format`. A
/// file that cannot be read or decoded is reported in [`BenchReport::skipped`] and
/// left out of the totals. `tick` is called once per entry (progress bars).
pub fn bench(
    model: &ModelFile,
    format: WeightFormat,
    entries: &[Entry],
    settings: &[BenchSetting],
    tick: &(dyn Fn() + Sync),
) -> Result<BenchReport> {
    for s in settings {
        s.options.validate(model)?;
    }
    let start = Instant::now();
    // Laid out once, before the clock of any utterance starts (as a server would).
    let weights = model.inference_weights(format);
    let front = model.front_end()?;
    let results: Vec<(usize, Result<UtteranceReport>)> = entries
        .par_iter()
        .enumerate()
        .map_init(
            || front.clone(),
            |front, (i, e)| {
                let r = one(model, &weights, front, e, settings);
                tick();
                (i, r)
            },
        )
        .collect();
    let mut per_utterance = Vec::new();
    let mut skipped = Vec::new();
    for (i, r) in results {
        match r {
            Ok(u) => per_utterance.push(u),
            Err(e) => skipped.push(BenchSkip {
                id: entries[i].id.clone(),
                error: e.to_string(),
            }),
        }
    }
    let audio: f64 = per_utterance.iter().map(|u| u.duration).sum();
    let summaries = settings
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let (mut words, mut chars, mut seconds) =
                (ErrorCounts::default(), ErrorCounts::default(), 0.0);
            for u in &per_utterance {
                words += u.results[k].words;
                chars += u.results[k].chars;
                seconds += u.results[k].seconds;
            }
            SettingSummary {
                name: s.name.clone(),
                options: s.options.clone(),
                lm: s
                    .options
                    .lm
                    .as_ref()
                    .map(|lm| (lm.0.order(), s.options.lm_weight)),
                wer: words.rate(),
                cer: chars.rate(),
                words,
                chars,
                seconds,
                real_time_factor: seconds / audio.max(f64::MIN_POSITIVE),
            }
        })
        .collect();
    Ok(BenchReport {
        utterances: per_utterance.len(),
        audio_hours: audio / 3600.0,
        wall_seconds: start.elapsed().as_secs_f64(),
        threads: rayon::current_num_threads(),
        weights: format.to_string(),
        settings: summaries,
        skipped,
        per_utterance,
    })
}
