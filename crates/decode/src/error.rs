//! The one error type of `lasr-decode`.
//!
//! Variants are sorted by what a caller can do about them: [`Error::Decoder`] is the
//! model failing on one utterance (report it, go on with the next), [`Error::Vocab`]
//! is a bad symbol list (fix the model file or the list), [`Error::Options`] is a search
//! setting out of range (fix the configuration), [`Error::Input`] is a search handed
//! malformed model output (fix the call or the model), [`Error::Contract`] is a
//! [`Decoder`](crate::Decoder) implementation breaking its contract, which only a fix
//! to that implementation cures, [`Error::Lm`] is a language model asked for something
//! it cannot do (fix the call or the configuration), and [`Error::LmFile`] is a language
//! model file that cannot be read or written (fix or rebuild the file).

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong building a vocabulary or searching.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model's own step failed; the source is the model's error, which callers can
    /// downcast to the model crate's type.
    #[error(transparent)]
    Decoder(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A symbol list cannot be a vocabulary.
    #[error("invalid vocabulary: {0}")]
    Vocab(VocabErrorKind),
    /// A search option is out of its valid range.
    #[error("invalid search options: {0}")]
    Options(String),
    /// Model output handed to a search directly is malformed: a length that does not
    /// match its dimensions, NaN or `+inf`, a blank outside the vocabulary.
    #[error("invalid search input: {0}")]
    Input(String),
    /// A decoder returned something its contract rules out (wrong number of
    /// log-probabilities, NaN, an attention peak outside the encoder output...).
    #[error("decoder broke its contract: {0}")]
    Contract(String),
    /// A language model cannot be trained or fused as asked (order out of range, no
    /// training text, a decoder whose symbols are not the model's, a negative weight).
    #[error("language model: {0}")]
    Lm(String),
    /// A language model file (or byte buffer, when `path` is `None`) cannot be read,
    /// written or accepted.
    #[error("language model {}: {kind}", describe_lm_source(.path))]
    LmFile {
        path: Option<PathBuf>,
        kind: LmFileErrorKind,
    },
}

fn describe_lm_source(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("file {}", p.display()),
        None => "bytes".to_string(),
    }
}

impl Error {
    /// What is wrong with the symbol list, when the error is about a vocabulary.
    pub fn vocab_kind(&self) -> Option<&VocabErrorKind> {
        match self {
            Error::Vocab(kind) => Some(kind),
            _ => None,
        }
    }

    /// What is wrong with the language model file, when the error is about one.
    pub fn lm_file_kind(&self) -> Option<&LmFileErrorKind> {
        match self {
            Error::LmFile { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

/// Why a language model file cannot be read, written or accepted.
#[derive(Debug, thiserror::Error)]
pub enum LmFileErrorKind {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The file does not start with the format's magic bytes.
    #[error("not a lasr language model (wrong magic bytes)")]
    NotALanguageModel,
    /// The file is the other kind of lasr language model.
    #[error("{found}, where {expected} was expected")]
    OtherKind {
        found: &'static str,
        expected: &'static str,
    },
    /// A format version this build cannot read.
    #[error("format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    /// The checksum does not match: the file was truncated or altered.
    #[error("checksum mismatch: the file is truncated or damaged")]
    Damaged,
    /// The model was built over other symbols than the vocabulary it is loaded for.
    #[error("{}", describe_vocab_mismatch(.expected, .found))]
    VocabMismatch {
        expected: Vec<String>,
        found: Vec<String>,
    },
    /// The checksum matches but the content breaks the format (what and where).
    #[error("malformed: {0}")]
    Malformed(String),
}

fn describe_vocab_mismatch(expected: &[String], found: &[String]) -> String {
    let first = expected
        .iter()
        .zip(found)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(found.len()));
    format!(
        "built for another vocabulary: {} symbols where {} were expected, first difference at id \
         {first} ({:?} where {:?} was expected)",
        found.len(),
        expected.len(),
        found
            .get(first)
            .map(String::as_str)
            .unwrap_or("end of list"),
        expected
            .get(first)
            .map(String::as_str)
            .unwrap_or("end of list"),
    )
}

/// Why a list of symbols is not a valid [`Vocab`](crate::Vocab).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VocabErrorKind {
    /// A special symbol is not at its fixed id; `found` is what sits there instead
    /// (`None` when the list is shorter than that).
    MissingSpecial {
        expected: &'static str,
        id: usize,
        found: Option<String>,
    },
    /// The same symbol appears twice.
    Duplicate {
        symbol: String,
        first: usize,
        second: usize,
    },
    /// A non-special symbol is not exactly one character.
    NotOneChar { symbol: String, id: usize },
    /// A character that normalisation never produces (upper case, whitespace other than
    /// the space, the unknown marker), so no text could ever be encoded to it.
    Unreachable { symbol: char, id: usize },
}

impl fmt::Display for VocabErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VocabErrorKind::*;
        match self {
            MissingSpecial {
                expected,
                id,
                found: Some(found),
            } => write!(f, "id {id} must be {expected}, found {found:?}"),
            MissingSpecial {
                expected,
                id,
                found: None,
            } => write!(f, "id {id} must be {expected}, but the list ends before it"),
            Duplicate {
                symbol,
                first,
                second,
            } => write!(f, "symbol {symbol:?} appears at ids {first} and {second}"),
            NotOneChar { symbol, id } => write!(
                f,
                "symbol {symbol:?} at id {id} is not a single character (only the specials may be longer)"
            ),
            Unreachable { symbol, id } => write!(
                f,
                "symbol {symbol:?} (U+{:04X}) at id {id} can never be produced: text is lower-cased, \
                 whitespace becomes a space, and {:?} marks unknown characters",
                *symbol as u32,
                crate::vocab::UNK_MARKER
            ),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
