//! # lasr-data
//!
//! Speech corpora for training and measuring: the LibriSpeech directory layout,
//! tab-separated manifests and Kaldi data directories ([`corpus`], [`kaldi`]),
//! features computed once into memory with bad files reported and skipped, and
//! length-bucketed, seeded batches ([`dataset`]); an on-disk feature cache ([`cache`])
//! and speed perturbation ([`perturb`]) for loading training sets.
//! Batches are time-major `[T, B, F]` like the rest of lasr.

pub mod cache;
pub mod corpus;
pub mod dataset;
pub mod error;
pub mod kaldi;
pub mod perturb;

pub use cache::{FeatureCache, CACHE_VERSION};
pub use corpus::{corpus, entries, librispeech, tsv, Corpus, Entry, Segment, Warning};
pub use dataset::{BatchPlan, Dataset, LoadOptions, LoadReport, Padded, Skipped, Utterance};
pub use error::{Error, Result};
pub use kaldi::kaldi;
pub use perturb::{perturbed_id, speed_perturb, SpeedPerturb};
