//! A corpus with its features in memory, and length-bucketed batches of it.
//!
//! Features are computed once when the corpus is loaded (7.8 h of LibriSpeech take a
//! few seconds on two cores and about 0.9 GB), so an epoch never touches the audio.

use std::path::PathBuf;

use lasr_features::{FrontEnd, FrontEndConfig};
use ndarray::{s, Array2, Array3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::corpus::Entry;
use crate::error::{Error, Result};

/// One utterance with its features.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub id: String,
    pub transcript: String,
    /// Features `[T, F]`, normalised as the front-end config says.
    pub feats: Array2<f32>,
}

/// A corpus entry that could not be used, and why.
#[derive(Debug)]
pub struct Skipped {
    pub entry: Entry,
    pub error: lasr_features::Error,
}

/// Utterances in memory, sorted by id.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub utterances: Vec<Utterance>,
}

/// How to cut an epoch into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// Most padded frames in one batch (longest utterance x batch size); bounds memory.
    pub max_frames: usize,
    /// Most utterances in one batch.
    pub max_utterances: usize,
}

/// A batch padded to its longest utterance, time-major.
#[derive(Debug, Clone)]
pub struct Padded {
    /// `[T, B, F]`, zero beyond each length.
    pub feats: Array3<f32>,
    /// Frames of each utterance `[B]`.
    pub lengths: Vec<usize>,
    pub ids: Vec<String>,
    pub transcripts: Vec<String>,
}

impl Dataset {
    /// Computes features of every entry in parallel. Entries whose audio cannot be
    /// used are returned in the second list (with the reason) and left out; `on_file`
    /// is called once per entry (for progress bars). Fails only when nothing is left.
    pub fn load(
        entries: Vec<Entry>,
        front: &FrontEndConfig,
        on_file: &(dyn Fn() + Sync),
    ) -> Result<(Dataset, Vec<Skipped>)> {
        let front = FrontEnd::new(front.clone())?;
        let first = entries.first().map(|e| e.audio.clone()).unwrap_or_default();
        let results: Vec<(Entry, lasr_features::Result<Array2<f32>>)> = entries
            .into_par_iter()
            .map_init(
                || front.clone(),
                |front, entry| {
                    let r = front.file_features(&entry.audio);
                    on_file();
                    (entry, r)
                },
            )
            .collect();
        let mut utterances = Vec::with_capacity(results.len());
        let mut skipped = Vec::new();
        for (entry, r) in results {
            match r {
                Ok(feats) => utterances.push(Utterance {
                    id: entry.id,
                    transcript: entry.transcript,
                    feats,
                }),
                Err(error) => skipped.push(Skipped { entry, error }),
            }
        }
        if utterances.is_empty() {
            return Err(Error::Empty {
                path: first.parent().map(PathBuf::from).unwrap_or_default(),
                reason: format!("all {} entries failed to load", skipped.len()),
            });
        }
        utterances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((Dataset { utterances }, skipped))
    }

    /// Number of utterances.
    pub fn len(&self) -> usize {
        self.utterances.len()
    }

    /// True when there are no utterances.
    pub fn is_empty(&self) -> bool {
        self.utterances.is_empty()
    }

    /// Global CMVN statistics of all utterances' features.
    pub fn cmvn_stats(&self) -> lasr_features::CmvnStats {
        let dim = self.utterances.first().map_or(0, |u| u.feats.ncols());
        let mut stats = lasr_features::CmvnStats::new(dim);
        for u in &self.utterances {
            stats
                .accumulate(u.feats.view())
                .expect("one front end gives one width");
        }
        stats
    }

    /// Normalises every utterance in place.
    pub fn normalize(&mut self, cmvn: &lasr_features::Cmvn) -> Result<()> {
        for u in &mut self.utterances {
            cmvn.apply(u.feats.view_mut())?;
        }
        Ok(())
    }

    /// Total frames.
    pub fn frames(&self) -> usize {
        self.utterances.iter().map(|u| u.feats.nrows()).sum()
    }

    /// An epoch's batches as lists of utterance indices: utterances of similar length
    /// together (so little is padding), batch order shuffled by `seed`. Every utterance
    /// appears exactly once; an utterance longer than `max_frames` gets a batch alone.
    pub fn batches(&self, plan: BatchPlan, seed: u64) -> Vec<Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..self.len()).collect();
        // Shuffle first so that equal lengths land in different batches each epoch.
        shuffle(&mut order, &mut rng);
        order.sort_by_key(|&i| self.utterances[i].feats.nrows());
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        for i in order {
            let len = self.utterances[i].feats.nrows();
            // Sorted ascending, so this utterance is the longest of the batch.
            let fits = (current.len() + 1) * len <= plan.max_frames
                && current.len() < plan.max_utterances.max(1);
            if !fits && !current.is_empty() {
                batches.push(std::mem::take(&mut current));
            }
            current.push(i);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        shuffle(&mut batches, &mut rng);
        batches
    }

    /// The utterances at `indices`, padded into one time-major batch.
    pub fn padded(&self, indices: &[usize]) -> Padded {
        let dim = self.utterances.first().map_or(0, |u| u.feats.ncols());
        let steps = indices
            .iter()
            .map(|&i| self.utterances[i].feats.nrows())
            .max()
            .unwrap_or(0);
        let mut feats = Array3::zeros((steps, indices.len(), dim));
        let mut lengths = Vec::with_capacity(indices.len());
        for (b, &i) in indices.iter().enumerate() {
            let u = &self.utterances[i];
            feats
                .slice_mut(s![..u.feats.nrows(), b, ..])
                .assign(&u.feats);
            lengths.push(u.feats.nrows());
        }
        Padded {
            feats,
            lengths,
            ids: indices
                .iter()
                .map(|&i| self.utterances[i].id.clone())
                .collect(),
            transcripts: indices
                .iter()
                .map(|&i| self.utterances[i].transcript.clone())
                .collect(),
        }
    }
}

/// Fisher-Yates with the crate's seeded generator (portable across platforms).
fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    use rand::Rng;
    for i in (1..items.len()).rev() {
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        items.swap(i, j);
    }
}
