//! # lasr-data
//!
//! Speech corpora for training and measuring: the LibriSpeech directory layout and
//! tab-separated manifests ([`corpus`]), features computed once into memory with bad
//! files reported and skipped, and length-bucketed, seeded batches ([`dataset`]).
//! Batches are time-major `[T, B, F]` like the rest of lasr.

pub mod corpus;
pub mod dataset;
pub mod error;

pub use corpus::{entries, librispeech, tsv, Entry};
pub use dataset::{BatchPlan, Dataset, Padded, Skipped, Utterance};
pub use error::{Error, Result};
