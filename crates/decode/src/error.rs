//! The one error type of `lasr-decode`.
//!
//! Variants are sorted by what a caller can do about them: [`Error::Decoder`] is the
//! model failing on one utterance (report it, go on with the next), [`Error::Vocab`]
//! is a bad symbol list (fix the model file or the list), [`Error::Options`] is a search
//! setting out of range (fix the configuration), and [`Error::Contract`] is a
//! [`Decoder`](crate::Decoder) implementation breaking its contract, which only a fix
//! to that implementation cures.

use std::fmt;

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
    /// A decoder returned something its contract rules out (wrong number of
    /// log-probabilities, NaN, an attention peak outside the encoder output...).
    #[error("decoder broke its contract: {0}")]
    Contract(String),
}

impl Error {
    /// What is wrong with the symbol list, when the error is about a vocabulary.
    pub fn vocab_kind(&self) -> Option<&VocabErrorKind> {
        match self {
            Error::Vocab(kind) => Some(kind),
            _ => None,
        }
    }
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
