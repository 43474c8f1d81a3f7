//! The one error type of `lasr-data`.

use std::path::PathBuf;

/// What can go wrong reading a corpus. A bad audio file is not an error of the corpus:
/// it is reported in [`crate::Skipped`] (with one of these as the reason) and left out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A corpus file or directory could not be read (or the feature cache directory
    /// could not be created).
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A transcript or manifest line is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    Format {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The corpus holds no usable utterance.
    #[error("{}: no utterances found ({reason})", path.display())]
    Empty { path: PathBuf, reason: String },
    /// A Kaldi segment does not fit its recording (`path` is the recording).
    #[error("{}: segment {id}: {reason}", path.display())]
    Segment {
        path: PathBuf,
        id: String,
        reason: String,
    },
    /// A loading option is invalid (say, a speed perturbation factor of 0).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The feature front end refused its configuration, or (in [`crate::Skipped`]) an
    /// audio file could not be used.
    #[error(transparent)]
    Features(#[from] lasr_features::Error),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
