//! The one error type of `lasr-features`.
//!
//! Variants are sorted by what a caller can do about them: [`Error::Io`] is about the
//! file system (retry, fix permissions), [`Error::Audio`] means this particular file is
//! unusable (report it and skip it), and [`Error::Config`] is a programming or
//! configuration mistake that no input will fix.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong between an audio file and its features.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read, but its content is not usable audio.
    #[error("{}: {kind}", path.display())]
    Audio { path: PathBuf, kind: AudioErrorKind },
    /// Samples handed over in memory are too few for a single analysis frame.
    #[error("{samples} samples are fewer than one analysis frame ({frame} samples)")]
    TooShort { samples: usize, frame: usize },
    /// No resampler can be built between these rates.
    #[error("cannot resample from {from} Hz to {to} Hz: {reason}")]
    Resample { from: u32, to: u32, reason: String },
    /// A configuration value is out of its valid range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Attaches a file name to an error raised on in-memory samples, so that a caller
    /// working through a corpus can tell which file was at fault.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Error {
        match self {
            Error::TooShort { samples, frame } => Error::Audio {
                path: path.into(),
                kind: AudioErrorKind::TooShort { samples, frame },
            },
            Error::Resample { from, to, reason } => Error::Audio {
                path: path.into(),
                kind: AudioErrorKind::UnsupportedRate {
                    rate: from,
                    reason: format!("cannot resample it to {to} Hz: {reason}"),
                },
            },
            other => other,
        }
    }

    /// The problem with the file, when the error is about a file's content.
    pub fn audio_kind(&self) -> Option<&AudioErrorKind> {
        match self {
            Error::Audio { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// What is wrong with an audio file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioErrorKind {
    /// Zero bytes long.
    Empty,
    /// Neither a RIFF/WAVE nor a FLAC stream; holds the first bytes, printable.
    UnknownFormat { magic: String },
    /// The header ends before it is complete.
    TruncatedHeader { format: &'static str },
    /// The header is complete but its values are invalid or contradict each other.
    BadHeader {
        format: &'static str,
        reason: String,
    },
    /// Valid but outside what lasr reads (say, 64-bit float WAV).
    Unsupported {
        format: &'static str,
        reason: String,
    },
    /// The header promises more audio than the file holds.
    TruncatedData {
        format: &'static str,
        expected: u64,
        found: u64,
    },
    /// The audio data itself is corrupt (bad FLAC frame, CRC mismatch, ...).
    CorruptData {
        format: &'static str,
        reason: String,
    },
    /// The header declares zero channels.
    ZeroChannels,
    /// The header declares a sample rate of zero.
    ZeroSampleRate,
    /// A sample rate lasr cannot use.
    UnsupportedRate { rate: u32, reason: String },
    /// A well-formed file with no samples in it.
    NoSamples,
    /// Fewer samples than one analysis frame, after resampling to the feature rate.
    TooShort { samples: usize, frame: usize },
}

impl fmt::Display for AudioErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use AudioErrorKind::*;
        match self {
            Empty => write!(f, "file is empty (0 bytes)"),
            UnknownFormat { magic } => write!(
                f,
                "not a WAV or FLAC file (it starts with {magic}; expected \"RIFF....WAVE\" or \"fLaC\")"
            ),
            TruncatedHeader { format } => {
                write!(f, "{format} header is truncated: the file ends inside it")
            }
            BadHeader { format, reason } => write!(f, "invalid {format} header: {reason}"),
            Unsupported { format, reason } => write!(f, "unsupported {format} audio: {reason}"),
            TruncatedData {
                format,
                expected,
                found,
            } => write!(
                f,
                "{format} audio data is truncated: the header promises {expected} samples, the file holds {found}"
            ),
            CorruptData { format, reason } => write!(f, "corrupt {format} audio data: {reason}"),
            ZeroChannels => write!(f, "header declares zero channels"),
            ZeroSampleRate => write!(f, "header declares a sample rate of 0 Hz"),
            UnsupportedRate { rate, reason } => write!(f, "sample rate {rate} Hz: {reason}"),
            NoSamples => write!(f, "contains no audio samples"),
            TooShort { samples, frame } => write!(
                f,
                "audio too short: {samples} samples at the feature rate, fewer than one analysis frame ({frame} samples)"
            ),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
