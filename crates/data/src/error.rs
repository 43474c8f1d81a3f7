//! The one error type of `lasr-data`.

use std::path::PathBuf;

/// What can go wrong reading a corpus. A bad audio file is not an error of the corpus:
/// it is reported in [`crate::Skipped`] and left out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A corpus file or directory could not be read.
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
    /// The feature front end refused its configuration.
    #[error(transparent)]
    Features(#[from] lasr_features::Error),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
