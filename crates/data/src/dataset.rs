//! A corpus with its features in memory, and length-bucketed batches of it.
//!
//! Features are computed once when the corpus is loaded (7.8 h of LibriSpeech take a
//! few seconds on two cores and about 0.9 GB), so an epoch never touches the audio.
//! Loading can read and write an on-disk feature cache ([`crate::cache`]) and add
//! speed-perturbed copies of every utterance ([`crate::perturb`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

use lasr_features::{Audio, Fbank, FrontEndConfig, Resampler};
use ndarray::{s, Array2, Array3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::cache::{FeatureCache, FileStamp, Lookup};
use crate::corpus::{Entry, Warning};
use crate::error::{Error, Result};
use crate::perturb::{perturbed_id, SpeedPerturb};

/// One utterance with its features.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub id: String,
    pub transcript: String,
    /// Features `[T, F]`, normalised as the front-end config says.
    pub feats: Array2<f32>,
}

/// A corpus entry that could not be used, and why. For a speed-perturbed copy that
/// failed alone, `entry.id` is the copy's id (`sp1.1-ID`).
#[derive(Debug)]
pub struct Skipped {
    pub entry: Entry,
    /// The reason: [`Error::Features`] for the audio file (its kind in
    /// `lasr_features::Error::audio_kind`), [`Error::Segment`] for a Kaldi segment.
    pub error: Error,
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

/// How [`Dataset::load_with`] turns entries into features.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Feature settings; the utterance mean, CMVN and utterance shape, when set, are
    /// applied after the cache (which holds raw features). To gather CMVN statistics
    /// first, load without CMVN or the shape, then [`Dataset::normalize`].
    pub front: FrontEndConfig,
    /// Feature cache directory ([`crate::cache`]); `None` computes everything.
    pub cache: Option<PathBuf>,
    /// Speed perturbation: each factor other than 1 adds a copy of every utterance,
    /// its audio played that much faster, with id `sp{factor}-{id}`; the originals are
    /// always kept (so `[0.9, 1.0, 1.1]` triples the corpus). For training sets only.
    pub speed_perturb: Vec<f32>,
}

/// What loading did besides the features.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Entries (or perturbed copies) left out, with the reason.
    pub skipped: Vec<Skipped>,
    /// Feature matrices read from the cache.
    pub cache_hits: usize,
    /// Feature matrices computed from audio (stored in the cache when there is one).
    pub computed: usize,
    /// Cache entries found damaged (and recomputed) or not writable.
    pub warnings: Vec<Warning>,
}

/// What loading needs on every worker.
struct Plan {
    /// Raw features (CMVN is applied after the cache).
    fbank: Fbank,
    rate: u32,
    /// Normalisation after the cache (utterance mean, global CMVN).
    front: FrontEndConfig,
    cache: Option<FeatureCache>,
    /// Speed 1 first, then the perturbations.
    speeds: Vec<Option<SpeedPerturb>>,
}

impl Plan {
    fn speed(&self, v: usize) -> f32 {
        self.speeds[v].as_ref().map_or(1.0, SpeedPerturb::factor)
    }
}

/// One worker's state: the filterbank and the resampler from the last input rate.
#[derive(Clone)]
struct Worker {
    fbank: Fbank,
    resampler: Option<Resampler>,
}

/// An entry with versions the cache did not have.
struct Pending<'a> {
    entry: &'a Entry,
    /// Indices into `Plan::speeds` still to compute.
    todo: Vec<usize>,
    /// Cache key of every version (`None`: not cached).
    keys: Vec<Option<Vec<u8>>>,
}

/// The results of one recording's entries.
#[derive(Default)]
struct Outcome {
    utterances: Vec<Utterance>,
    skipped: Vec<Skipped>,
    hits: usize,
    computed: usize,
    warnings: Vec<Warning>,
}

impl Outcome {
    fn merge(mut self, other: Outcome) -> Outcome {
        self.utterances.extend(other.utterances);
        self.skipped.extend(other.skipped);
        self.hits += other.hits;
        self.computed += other.computed;
        self.warnings.extend(other.warnings);
        self
    }
}

impl Worker {
    /// `samples` at `from` Hz, at `to` Hz.
    fn resample<'a>(
        &mut self,
        samples: &'a [f32],
        from: u32,
        to: u32,
    ) -> lasr_features::Result<Cow<'a, [f32]>> {
        if from == to {
            return Ok(Cow::Borrowed(samples));
        }
        let resampler = match &self.resampler {
            Some(r) if r.from_rate() == from && r.to_rate() == to => r,
            _ => self.resampler.insert(Resampler::new(from, to)?),
        };
        Ok(Cow::Owned(resampler.process(samples)))
    }

    /// The missing versions `todo` (indices into `plan.speeds`) of `entry`, whose
    /// recording is `recording`; `keys[v]` caches version `v`.
    fn compute(
        &mut self,
        plan: &Plan,
        entry: &Entry,
        recording: &Audio,
        todo: &[usize],
        keys: &[Option<Vec<u8>>],
    ) -> Outcome {
        let mut out = Outcome::default();
        let samples = match entry.cut(recording).and_then(|s| {
            self.resample(s, recording.sample_rate, plan.rate)
                .map_err(|e| e.in_file(&entry.audio).into())
        }) {
            Ok(s) => s,
            Err(error) => {
                out.skipped.push(Skipped {
                    entry: entry.clone(),
                    error,
                });
                return out;
            }
        };
        for &v in todo {
            let raw = match &plan.speeds[v] {
                None => self.fbank.compute(&samples),
                Some(sp) => self.fbank.compute(&sp.apply(&samples)),
            };
            match raw {
                Ok(feats) => {
                    out.computed += 1;
                    if let (Some(cache), Some(key)) = (&plan.cache, &keys[v]) {
                        if let Err(w) = cache.put(key, &feats) {
                            out.warnings.push(w);
                        }
                    }
                    finish(plan, entry, v, feats, &mut out);
                }
                Err(e) => out.skipped.push(Skipped {
                    entry: version_entry(plan, entry, v),
                    error: e.in_file(&entry.audio).into(),
                }),
            }
        }
        out
    }

    /// Every version of every entry of one recording: from the cache where it can,
    /// decoding the recording once for the rest.
    fn recording(
        &mut self,
        plan: &Plan,
        entries: &[Entry],
        on_file: &(dyn Fn() + Sync),
    ) -> Outcome {
        let mut out = Outcome::default();
        let stamp = plan
            .cache
            .as_ref()
            .and(entries.first())
            .and_then(|e| FileStamp::of(&e.audio));
        // Per entry: cache keys and the versions still to compute.
        let mut work: Vec<Pending> = Vec::new();
        for entry in entries {
            let mut todo = Vec::new();
            let mut keys = Vec::with_capacity(plan.speeds.len());
            for v in 0..plan.speeds.len() {
                let key = match (&plan.cache, &stamp) {
                    (Some(cache), Some(stamp)) => {
                        Some(cache.key(stamp, entry.segment.as_ref(), plan.speed(v)))
                    }
                    _ => None,
                };
                let lookup = match (&plan.cache, &key) {
                    (Some(cache), Some(key)) => cache.get(key),
                    _ => Lookup::Miss,
                };
                match lookup {
                    Lookup::Hit(feats) => {
                        out.hits += 1;
                        finish(plan, entry, v, feats, &mut out);
                    }
                    Lookup::Miss => todo.push(v),
                    Lookup::Bad(w) => {
                        out.warnings.push(w);
                        todo.push(v);
                    }
                }
                keys.push(key);
            }
            if todo.is_empty() {
                on_file();
            } else {
                work.push(Pending { entry, todo, keys });
            }
        }
        if work.is_empty() {
            return out;
        }
        let recording = match lasr_features::load(&work[0].entry.audio) {
            Ok(a) => a,
            Err(e) => {
                // Every entry of the recording fails alike; each gets its own error
                // value (reading again on this rare path keeps the typed kind).
                let mut first = Some(e);
                for Pending { entry, .. } in &work {
                    let error = first
                        .take()
                        .or_else(|| lasr_features::load(&entry.audio).err())
                        .map_or_else(
                            || Error::Segment {
                                path: entry.audio.clone(),
                                id: entry.id.clone(),
                                reason: "the recording could not be read".into(),
                            },
                            Error::from,
                        );
                    out.skipped.push(Skipped {
                        entry: (*entry).clone(),
                        error,
                    });
                    on_file();
                }
                return out;
            }
        };
        let done = if work.len() == 1 {
            let p = &work[0];
            let o = self.compute(plan, p.entry, &recording, &p.todo, &p.keys);
            on_file();
            o
        } else {
            // Many segments of one recording: spread them over the threads too.
            let template = self.clone();
            work.par_iter()
                .map_init(
                    || template.clone(),
                    |w, p| {
                        let o = w.compute(plan, p.entry, &recording, &p.todo, &p.keys);
                        on_file();
                        o
                    },
                )
                .reduce(Outcome::default, Outcome::merge)
        };
        out.merge(done)
    }
}

/// The entry (or its perturbed copy) that version `v` stands for.
fn version_entry(plan: &Plan, entry: &Entry, v: usize) -> Entry {
    match &plan.speeds[v] {
        None => entry.clone(),
        Some(sp) => Entry {
            id: perturbed_id(&entry.id, sp.factor()),
            ..entry.clone()
        },
    }
}

/// Pads and normalises raw features of version `v` of `entry` and adds the utterance.
fn finish(plan: &Plan, entry: &Entry, v: usize, feats: Array2<f32>, out: &mut Outcome) {
    let feats = match plan.front.prepare(feats) {
        Ok(f) => f,
        Err(e) => {
            out.skipped.push(Skipped {
                entry: version_entry(plan, entry, v),
                error: e.into(),
            });
            return;
        }
    };
    let id = match &plan.speeds[v] {
        None => entry.id.clone(),
        Some(sp) => perturbed_id(&entry.id, sp.factor()),
    };
    out.utterances.push(Utterance {
        id,
        transcript: entry.transcript.clone(),
        feats,
    });
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
        let options = LoadOptions {
            front: front.clone(),
            ..LoadOptions::default()
        };
        Dataset::load_with(entries, &options, on_file).map(|(d, r)| (d, r.skipped))
    }

    /// [`Dataset::load`] with a feature cache and speed perturbation. Each recording
    /// is decoded once, however many Kaldi segments it holds, and not at all when the
    /// cache has all its features. Errors: invalid options, a cache directory that
    /// cannot be created, or no utterance left; everything else is in the report.
    pub fn load_with(
        entries: Vec<Entry>,
        options: &LoadOptions,
        on_file: &(dyn Fn() + Sync),
    ) -> Result<(Dataset, LoadReport)> {
        options.front.validate()?;
        let fbank = Fbank::new(&options.front.features)?;
        let rate = options.front.features.sample_rate;
        let mut speeds = vec![None];
        for (i, &f) in options.speed_perturb.iter().enumerate() {
            if options.speed_perturb[..i].contains(&f) {
                return Err(Error::Config(format!(
                    "speed perturbation factor {f} is given twice"
                )));
            }
            if f != 1.0 {
                speeds.push(Some(SpeedPerturb::new(f, rate)?));
            }
        }
        let cache = options
            .cache
            .as_deref()
            .map(|dir| FeatureCache::open(dir, &options.front.features))
            .transpose()?;
        let plan = Plan {
            fbank,
            rate,
            front: options.front.clone(),
            cache,
            speeds,
        };
        let first = entries.first().map(|e| e.audio.clone()).unwrap_or_default();
        let total = entries.len();
        // Entries of one recording together (Kaldi segments), in first-seen order.
        let mut groups: Vec<Vec<Entry>> = Vec::new();
        let mut group_of: HashMap<PathBuf, usize> = HashMap::new();
        for e in entries {
            match group_of.get(&e.audio) {
                Some(&g) => groups[g].push(e),
                None => {
                    group_of.insert(e.audio.clone(), groups.len());
                    groups.push(vec![e]);
                }
            }
        }
        let worker = Worker {
            fbank: plan.fbank.clone(),
            resampler: None,
        };
        let outcome = groups
            .par_iter()
            .map_init(
                || worker.clone(),
                |w, group| w.recording(&plan, group, on_file),
            )
            .reduce(Outcome::default, Outcome::merge);
        let Outcome {
            mut utterances,
            mut skipped,
            hits,
            computed,
            mut warnings,
        } = outcome;
        if utterances.is_empty() {
            return Err(Error::Empty {
                path: first.parent().map(PathBuf::from).unwrap_or_default(),
                reason: format!(
                    "all {total} entries failed to load{}",
                    skipped
                        .first()
                        .map_or(String::new(), |s| format!(" (first: {})", s.error))
                ),
            });
        }
        utterances.sort_by(|a, b| a.id.cmp(&b.id));
        skipped.sort_by(|a, b| a.entry.id.cmp(&b.entry.id));
        warnings.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((
            Dataset { utterances },
            LoadReport {
                skipped,
                cache_hits: hits,
                computed,
                warnings,
            },
        ))
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

    /// Applies `front`'s steps that need the corpus statistics (its CMVN, then each
    /// utterance's shape off if `utterance_shape`:
    /// [`lasr_features::FrontEndConfig::normalize_corpus`]) to every utterance in
    /// place: for a set loaded without them, whose statistics made that CMVN.
    pub fn normalize(&mut self, front: &FrontEndConfig) -> Result<()> {
        for u in &mut self.utterances {
            front.normalize_corpus(u.feats.view_mut())?;
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
