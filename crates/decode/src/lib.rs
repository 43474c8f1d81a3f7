//! # lasr-decode
//!
//! From model outputs to scored text, independent of any model: the character
//! vocabulary ([`vocab`]), greedy and beam search over any autoregressive model that
//! implements [`Decoder`] ([`search`]), CTC prefix beam search over a CTC head's output
//! ([`ctc`]), word/character error rates ([`score`]), and a character n-gram language
//! model with shallow fusion into any [`Decoder`] or into the CTC search ([`lm`]), and a
//! word n-gram model for the CTC search ([`word_lm`]).
//!
//! Scoring a hypothesis the way the recogniser sees text:
//!
//! ```
//! use lasr_decode::{cer, wer, ErrorCounts, Vocab};
//!
//! let vocab = Vocab::librispeech();
//! let reference = vocab.normalize_transcript("HE HOPED THERE WOULD BE STEW FOR DINNER");
//! let tokens = vocab.encode("he hoped there would be stew for diner");
//! let hypothesis = vocab.normalize_transcript(&vocab.decode(&tokens));
//! let words = wer(&reference, &hypothesis);
//! assert_eq!((words.substitutions, words.reference_len), (1, 8));
//! assert_eq!(cer(&reference, &hypothesis).deletions, 1);
//! // Over a corpus, add counts and take the rate of the total.
//! let corpus: ErrorCounts = [words, wer("stew", "stew")].iter().sum();
//! assert_eq!(corpus.rate(), 1.0 / 9.0);
//! ```

pub mod ctc;
pub mod error;
pub mod joint;
pub mod lexicon;
pub mod lm;
mod ngram;
pub mod score;
pub mod search;
pub mod vocab;
pub mod word_lm;

pub use ctc::{ctc_beam_search, ctc_beam_search_with, CtcHypothesis, CtcSearchOptions, Words};
pub use error::{Error, LmFileErrorKind, Result, VocabErrorKind};
pub use joint::{JointCtc, JointState};
pub use lexicon::Lexicon;
pub use lm::{CharLm, Fused, FusedState};
pub use score::{align, cer, char_units, error_counts, wer, word_units, EditOp, ErrorCounts};
pub use search::{
    beam_search, greedy, score_sequences, Decoder, Hypothesis, LengthNorm, SearchOptions, Step,
};
pub use vocab::{Vocab, UNK_MARKER};
pub use word_lm::WordLm;
