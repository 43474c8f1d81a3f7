//! Audio to text with a [`ModelFile`]: features, listener, beam search, words with
//! times.

use std::path::Path;

use lasr_decode::{beam_search, Hypothesis, SearchOptions, Vocab};
use lasr_features::FrontEnd;
use ndarray::ArrayView2;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::file::ModelFile;

/// A word and when it was spoken, from the attention peaks of its letters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Word {
    pub word: String,
    /// Seconds from the start of the audio.
    pub start: f32,
    pub end: f32,
}

/// One candidate transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alternative {
    pub text: String,
    /// Sum of token log-probabilities (natural log), `<eos>` included.
    pub log_prob: f64,
    /// What the search ranked by (see `SearchOptions::length_norm`).
    pub score: f64,
}

/// The result for one utterance: the best transcript, its words, and the n-best list
/// (best first, the best included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transcript {
    pub text: String,
    /// Token ids of the best transcript (without `<sos>`/`<eos>`).
    pub tokens: Vec<usize>,
    pub words: Vec<Word>,
    pub nbest: Vec<Alternative>,
    /// True when the best hypothesis ended with `<eos>` rather than at the length limit.
    pub finished: bool,
}

/// Groups tokens into words at spaces; a word spans its letters' attention peaks plus
/// one listener frame (`seconds_per_frame`).
fn words(vocab: &Vocab, h: &Hypothesis, seconds_per_frame: f32) -> Vec<Word> {
    let Some(peaks) = &h.attention_peaks else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut current: Option<(String, usize, usize)> = None;
    for (&tok, &peak) in h.tokens.iter().zip(peaks) {
        let symbol = vocab.decode(&[tok]);
        if symbol == " " || symbol.is_empty() {
            out.extend(current.take());
            continue;
        }
        let w = current.get_or_insert_with(|| (String::new(), peak, peak));
        w.0.push_str(&symbol);
        w.1 = w.1.min(peak);
        w.2 = w.2.max(peak);
    }
    out.extend(current);
    out.into_iter()
        .map(|(word, a, b)| Word {
            word,
            start: a as f32 * seconds_per_frame,
            end: (b + 1) as f32 * seconds_per_frame,
        })
        .collect()
}

impl ModelFile {
    /// Seconds of audio per listener frame.
    pub fn seconds_per_frame(&self) -> f32 {
        self.las.config.reduction() as f32 * self.front_end.features.frame_shift_ms / 1000.0
    }

    /// Transcribes normalised features `[T, F]` (as `front_end` makes them).
    pub fn transcribe_features(
        &self,
        feats: ArrayView2<f32>,
        options: &SearchOptions,
    ) -> Result<Transcript> {
        let decoder = self.las.encode(feats)?;
        let hyps = beam_search(&decoder, options)?;
        let best = hyps
            .first()
            .ok_or_else(|| Error::Model("beam search returned nothing".into()))?;
        Ok(Transcript {
            text: self.vocab.decode(&best.tokens),
            tokens: best.tokens.clone(),
            words: words(&self.vocab, best, self.seconds_per_frame()),
            finished: best.finished,
            nbest: hyps
                .iter()
                .map(|h| Alternative {
                    text: self.vocab.decode(&h.tokens),
                    log_prob: h.log_prob,
                    score: h.score,
                })
                .collect(),
        })
    }

    /// Attention weights `[L, U]` of the model reading `tokens` (a transcript, without
    /// `<sos>`/`<eos>`) over features `[T, F]`: row `l` is where output step `l`
    /// looked (the last row is the `<eos>` step). For alignment plots.
    pub fn attention(
        &self,
        feats: ArrayView2<f32>,
        tokens: &[usize],
    ) -> Result<ndarray::Array2<f32>> {
        let batch = crate::las::Batch {
            feats: feats.insert_axis(ndarray::Axis(1)).to_owned(),
            lengths: vec![feats.nrows()],
            targets: vec![tokens.to_vec()],
        };
        let (_, cache) = self.las.forward(&batch)?;
        Ok(cache.attention().index_axis_move(ndarray::Axis(1), 0))
    }

    /// A front end for this model (one per thread).
    pub fn front_end(&self) -> Result<FrontEnd> {
        Ok(FrontEnd::new(self.front_end.clone())?)
    }

    /// Transcribes an audio file (any WAV or FLAC); errors name the file.
    pub fn transcribe_file(
        &self,
        front: &mut FrontEnd,
        path: &Path,
        options: &SearchOptions,
    ) -> Result<Transcript> {
        let feats = front.file_features(path)?;
        self.transcribe_features(feats.view(), options)
            .map_err(|e| match e {
                Error::Batch(m) => Error::Batch(format!("{}: {m}", path.display())),
                other => other,
            })
    }
}
