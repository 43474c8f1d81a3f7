//! # lasr-features
//!
//! Everything between an audio file and the normalised log-mel matrix the model eats:
//! decoding ([`audio`]), resampling ([`resample`]), Kaldi-compatible filterbanks
//! ([`fbank`]), global CMVN ([`cmvn`]) and SpecAugment ([`specaug`]).
//!
//! Layout convention for the whole workspace: feature matrices are time-major,
//! `[T, D]` row-major (one row per 10 ms frame).
//!
//! ```no_run
//! use lasr_features::{FrontEnd, FrontEndConfig};
//! let mut front = FrontEnd::new(FrontEndConfig::default())?;
//! let feats = front.file_features("utt.flac")?; // [T, 80]
//! # Ok::<(), lasr_features::Error>(())
//! ```

pub mod audio;
pub mod cmvn;
pub mod error;
pub mod fbank;
pub mod resample;
pub mod specaug;
mod spectrum;

use std::path::{Path, PathBuf};

use ndarray::Array2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use audio::{collect_audio_files, decode, load, load_at_rate, Audio};
pub use cmvn::{Cmvn, CmvnStats};
pub use error::{AudioErrorKind, Error, Result};
pub use fbank::{Fbank, FeatureConfig, WindowType};
pub use resample::Resampler;
pub use specaug::{spec_augment, spec_augment_seeded, SpecAugmentConfig};

/// Format version of [`FrontEndConfig`] as serialised; bumped on incompatible change.
pub const FRONT_END_VERSION: u32 = 1;

/// Everything needed to turn audio into model input: the filterbank settings and the
/// corpus normalisation. Travels inside every model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontEndConfig {
    /// [`FRONT_END_VERSION`] at the time of writing.
    pub version: u32,
    /// Filterbank settings.
    pub features: FeatureConfig,
    /// Global normalisation; `None` leaves features raw.
    pub cmvn: Option<Cmvn>,
    /// Subtract each utterance's own mean from its features before `cmvn`
    /// ([`cmvn::subtract_mean`]); absent from older model files: off.
    #[serde(default)]
    pub utterance_mean: bool,
    /// Subtract each utterance's mean spectral shape after `cmvn`
    /// ([`cmvn::subtract_shape`]): a recording channel's colouring goes, its level
    /// stays. Models trained without it may be given it to read with (the default
    /// model is: DEVELOPERS.md, "Twenty-first session"). Absent from older model
    /// files: off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub utterance_shape: bool,
    /// After `cmvn` and the shape, each band's deviations from its utterance mean are
    /// multiplied by `s^-p` for this `p`, `s` being the band's standard deviation over
    /// the utterance ([`cmvn::scale_spread`]): 1 would give every band unit variance
    /// per utterance, 0 (absent from older model files) leaves the spread alone. A
    /// noisy or quiet recording squeezes the log-mel range, a close microphone widens
    /// it. Not on in the default model: for models trained without it, 0.3 helped most
    /// speakers but widened a quiet speaker's pauses into noise (DEVELOPERS.md,
    /// "Twenty-first session").
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub utterance_spread: f32,
    /// Frames added at each end of every utterance before any normalisation, each
    /// band set to its quietest value in the utterance ([`pad_edges`]); absent from
    /// older model files: 0. Audio cut tight around a word leaves a CTC head too few
    /// output frames to spell it ("THREE" needs six, blank included, and 0.24 s makes
    /// five at 4x reduction); a few frames of floor on each side give it room.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pad_frames: usize,
}

// Model files without padding stay readable by versions that predate it
// (`deny_unknown_fields`).
fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_f32(x: &f32) -> bool {
    *x == 0.0
}

impl Default for FrontEndConfig {
    fn default() -> Self {
        FrontEndConfig {
            version: FRONT_END_VERSION,
            features: FeatureConfig::default(),
            cmvn: None,
            utterance_mean: false,
            utterance_shape: false,
            utterance_spread: 0.0,
            pad_frames: 0,
        }
    }
}

impl FrontEndConfig {
    /// Checks version, feature settings and that CMVN matches the feature width.
    pub fn validate(&self) -> Result<()> {
        if self.version != FRONT_END_VERSION {
            return Err(Error::Config(format!(
                "front-end config version {} is not the supported version {FRONT_END_VERSION}",
                self.version
            )));
        }
        self.features.validate()?;
        if !(0.0..=1.0).contains(&self.utterance_spread) {
            return Err(Error::Config(format!(
                "utterance_spread {} is outside 0..=1",
                self.utterance_spread
            )));
        }
        if self.pad_frames > Self::MAX_PAD_FRAMES {
            return Err(Error::Config(format!(
                "pad_frames {} is more than {} frames",
                self.pad_frames,
                Self::MAX_PAD_FRAMES
            )));
        }
        if let Some(c) = &self.cmvn {
            if c.dim() != self.features.num_mel_bins || c.std.len() != c.dim() {
                return Err(Error::Config(format!(
                    "CMVN is {}-wide but features have {} mel bins",
                    c.dim(),
                    self.features.num_mel_bins
                )));
            }
        }
        Ok(())
    }

    /// These settings without the steps that need corpus statistics (CMVN, and the
    /// utterance's shape and spread, which come after it): what features are loaded
    /// with to gather the statistics, before [`Self::normalize_corpus`] applies them.
    pub fn for_statistics(&self) -> FrontEndConfig {
        FrontEndConfig {
            cmvn: None,
            utterance_shape: false,
            utterance_spread: 0.0,
            ..self.clone()
        }
    }

    /// Most `pad_frames` accepted (1 s at the usual 10 ms shift): more is no use, and
    /// far more could let long audio be cut inside its padding.
    pub const MAX_PAD_FRAMES: usize = 100;

    /// Raw features `[T, D]` to model input `[T + 2 * pad_frames, D]` (`T` when `T` is
    /// 0): the edges padded ([`pad_edges`]), then [`Self::normalize`].
    pub fn prepare(&self, feats: Array2<f32>) -> Result<Array2<f32>> {
        let mut feats = pad_edges(feats, self.pad_frames);
        self.normalize(feats.view_mut())?;
        Ok(feats)
    }

    /// Raw features `[T, D]` to model input, without the padding of [`Self::prepare`]
    /// (for features padded already): the utterance's mean off (if
    /// `utterance_mean`), then [`Self::normalize_corpus`].
    pub fn normalize(&self, mut feats: ndarray::ArrayViewMut2<f32>) -> Result<()> {
        if self.utterance_mean {
            cmvn::subtract_mean(feats.view_mut());
        }
        self.normalize_corpus(feats)
    }

    /// The steps of [`Self::normalize`] that need the corpus statistics, for features
    /// `[T, D]` that had the others while the statistics were gathered: global CMVN
    /// (if any), then the utterance's shape taken off (if `utterance_shape`), then its
    /// spread scaled (if `utterance_spread` is not 0).
    pub fn normalize_corpus(&self, mut feats: ndarray::ArrayViewMut2<f32>) -> Result<()> {
        if let Some(c) = &self.cmvn {
            c.apply(feats.view_mut())?;
        }
        if self.utterance_shape {
            cmvn::subtract_shape(feats.view_mut());
        }
        if self.utterance_spread != 0.0 {
            cmvn::scale_spread(feats, self.utterance_spread);
        }
        Ok(())
    }
}

/// Audio file to normalised features, with its plans and buffers kept across calls.
/// One per thread.
#[derive(Debug, Clone)]
pub struct FrontEnd {
    config: FrontEndConfig,
    fbank: Fbank,
    /// The converter from the last input rate seen: corpora come at one rate, and
    /// designing the filter costs about a millisecond.
    resampler: Option<Resampler>,
}

impl FrontEnd {
    /// Validates `config` and plans the filterbank.
    pub fn new(config: FrontEndConfig) -> Result<Self> {
        config.validate()?;
        let fbank = Fbank::new(&config.features)?;
        Ok(FrontEnd {
            config,
            fbank,
            resampler: None,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &FrontEndConfig {
        &self.config
    }

    /// Features `[T, num_mel_bins]` of audio at any rate (resampled as needed),
    /// normalised as configured ([`FrontEndConfig::normalize`]).
    pub fn audio_features(&mut self, audio: Audio) -> Result<Array2<f32>> {
        let rate = self.config.features.sample_rate;
        let samples = if audio.sample_rate == rate {
            audio.samples
        } else {
            let cached = self
                .resampler
                .as_ref()
                .is_some_and(|r| r.from_rate() == audio.sample_rate);
            if !cached {
                self.resampler = Some(Resampler::new(audio.sample_rate, rate)?);
            }
            let resampler = self.resampler.as_ref().expect("set just above");
            resampler.process(&audio.samples)
        };
        let feats = self.fbank.compute(&samples)?;
        self.config.prepare(feats)
    }

    /// Features `[T, num_mel_bins]` of a WAV or FLAC file; errors name the file.
    pub fn file_features(&mut self, path: impl AsRef<Path>) -> Result<Array2<f32>> {
        let path = path.as_ref();
        let audio = load(path)?;
        self.audio_features(audio).map_err(|e| e.in_file(path))
    }
}

/// Raw features `[T, D]` with `frames` rows added before and after, `[T + 2 * frames,
/// D]`: every added row holds each band's minimum over the utterance, the closest
/// thing a recording cut tight around its speech has to its own silence (a constant
/// noise floor in the same channel, unlike digital zeros, which the log floor turns
/// into values no recording has). An empty input stays empty: it has no floor.
pub fn pad_edges(feats: Array2<f32>, frames: usize) -> Array2<f32> {
    let (t, d) = feats.dim();
    if frames == 0 || t == 0 {
        return feats;
    }
    let mut floor = vec![f32::INFINITY; d];
    for row in feats.rows() {
        for (f, &x) in floor.iter_mut().zip(row) {
            // NaN never wins a comparison: a NaN stays in its own frame rather than
            // spreading to the padding (a band with no number at all pads with 0).
            if x < *f {
                *f = x;
            }
        }
    }
    let mut out = Array2::<f32>::zeros((t + 2 * frames, d));
    for (i, mut row) in out.rows_mut().into_iter().enumerate() {
        if i < frames || i >= frames + t {
            for (o, f) in row.iter_mut().zip(&floor) {
                *o = if f.is_finite() { *f } else { 0.0 };
            }
        } else {
            row.assign(&feats.row(i - frames));
        }
    }
    out
}

/// Features of many files in parallel on the rayon pool, one [`FrontEnd`] per worker
/// thread. Results come back in the order of `paths`; a bad file yields its own error
/// and does not stop the others.
pub fn extract_files(
    paths: &[PathBuf],
    config: &FrontEndConfig,
) -> Result<Vec<Result<Array2<f32>>>> {
    let front = FrontEnd::new(config.clone())?;
    Ok(paths
        .par_iter()
        .map_init(|| front.clone(), |front, path| front.file_features(path))
        .collect())
}

/// Global CMVN statistics of many files, in parallel, of the features `front` makes
/// before its own global CMVN (so with each utterance's mean off when
/// `front.utterance_mean`). Files that fail are returned with their errors, and left
/// out of the statistics; `on_file` is called once per file (for progress bars).
pub fn corpus_cmvn_stats(
    paths: &[PathBuf],
    front: &FrontEndConfig,
    on_file: &(dyn Fn() + Sync),
) -> Result<(CmvnStats, Vec<Error>)> {
    let dim = front.features.num_mel_bins;
    let front = FrontEnd::new(front.for_statistics())?;
    let (stats, errors) = paths
        .par_iter()
        .map_init(
            || front.clone(),
            |front, path| {
                let r = front.file_features(path);
                on_file();
                r
            },
        )
        .fold(
            || (CmvnStats::new(dim), Vec::new()),
            |(mut stats, mut errors), r| {
                match r.and_then(|f| stats.accumulate(f.view())) {
                    Ok(()) => {}
                    Err(e) => errors.push(e),
                }
                (stats, errors)
            },
        )
        .reduce(
            || (CmvnStats::new(dim), Vec::new()),
            |(a, mut ea), (b, eb)| {
                ea.extend(eb);
                // Both accumulators are `dim` wide by construction.
                (a.merge(&b).unwrap_or_else(|_| unreachable!()), ea)
            },
        );
    Ok((stats, errors))
}
