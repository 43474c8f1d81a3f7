//! Character vocabulary for LibriSpeech-style transcripts.
//!
//! Ids 0..=3 are always the specials `<pad>`, `<sos>`, `<eos>`, `<unk>` (the model's
//! configuration fixes `sos = 1`, `eos = 2`); every other symbol is one character.
//! [`Vocab::librispeech`] is the 32-symbol set: specials, space, apostrophe, `a..=z`.
//!
//! Normalisation, shared by [`Vocab::encode`] and [`Vocab::normalize_transcript`] so that
//! references and hypotheses are scored on the same footing: lower-case every
//! character, turn each run of whitespace into one space, drop leading and trailing
//! whitespace, and map characters outside the vocabulary to `<unk>`, which renders as
//! [`UNK_MARKER`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, VocabErrorKind};

/// How `<unk>` (and any id outside the vocabulary) is rendered in decoded text.
///
/// One character, so that an unknown character costs one unit in CER, as the character
/// it stands for would; U+2047 is what SentencePiece prints for unknowns, and it cannot
/// be mistaken for transcript punctuation.
pub const UNK_MARKER: char = '\u{2047}';

/// The four specials, in id order.
const SPECIALS: [&str; 4] = ["<pad>", "<sos>", "<eos>", "<unk>"];

/// A validated symbol list with its reverse index.
///
/// Serialises as `{"symbols": [...]}`; deserialising validates exactly as
/// [`Vocab::new`] does, so a corrupt model file cannot yield an inconsistent vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "VocabFile", into = "VocabFile")]
pub struct Vocab {
    symbols: Vec<String>,
    ids: HashMap<char, usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VocabFile {
    symbols: Vec<String>,
}

impl TryFrom<VocabFile> for Vocab {
    type Error = VocabErrorKind;

    fn try_from(file: VocabFile) -> std::result::Result<Self, VocabErrorKind> {
        Vocab::validated(file.symbols)
    }
}

impl From<Vocab> for VocabFile {
    fn from(v: Vocab) -> Self {
        VocabFile { symbols: v.symbols }
    }
}

impl Vocab {
    /// Padding id; never a decoding target.
    pub const PAD: usize = 0;
    /// Start-of-sentence id, fed to the decoder at its first step.
    pub const SOS: usize = 1;
    /// End-of-sentence id; emitting it finishes a hypothesis.
    pub const EOS: usize = 2;
    /// Id of every character outside the vocabulary.
    pub const UNK: usize = 3;

    /// The 32-symbol LibriSpeech character set: 0 `<pad>`, 1 `<sos>`, 2 `<eos>`,
    /// 3 `<unk>`, 4 space, 5 apostrophe, 6..=31 `a..=z`.
    pub fn librispeech() -> Vocab {
        let symbols = SPECIALS
            .iter()
            .map(|s| s.to_string())
            .chain([" ".to_string(), "'".to_string()])
            .chain(('a'..='z').map(String::from))
            .collect();
        Vocab::validated(symbols).expect("the LibriSpeech symbol list is valid")
    }

    /// A vocabulary from `symbols` in id order (`symbols[i]` gets id `i`).
    ///
    /// The first four must be `<pad>`, `<sos>`, `<eos>`, `<unk>`; every other symbol must
    /// be one character that normalisation can produce (not upper case, not whitespace
    /// other than `' '`, not [`UNK_MARKER`]), and no symbol may appear twice.
    /// Errors are [`Error::Vocab`] with the first problem found.
    pub fn new<S: Into<String>>(symbols: impl IntoIterator<Item = S>) -> Result<Vocab> {
        let symbols: Vec<String> = symbols.into_iter().map(Into::into).collect();
        Vocab::validated(symbols).map_err(Error::Vocab)
    }

    fn validated(symbols: Vec<String>) -> std::result::Result<Vocab, VocabErrorKind> {
        for (id, expected) in SPECIALS.iter().enumerate() {
            let found = symbols.get(id);
            if found.map(String::as_str) != Some(*expected) {
                return Err(VocabErrorKind::MissingSpecial {
                    expected,
                    id,
                    found: found.cloned(),
                });
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(symbols.len());
        let mut ids = HashMap::with_capacity(symbols.len());
        for (id, symbol) in symbols.iter().enumerate() {
            if let Some(&first) = seen.get(symbol.as_str()) {
                return Err(VocabErrorKind::Duplicate {
                    symbol: symbol.clone(),
                    first,
                    second: id,
                });
            }
            seen.insert(symbol, id);
            if id < SPECIALS.len() {
                continue;
            }
            let mut chars = symbol.chars();
            let c = match (chars.next(), chars.next()) {
                (Some(c), None) => c,
                _ => {
                    return Err(VocabErrorKind::NotOneChar {
                        symbol: symbol.clone(),
                        id,
                    })
                }
            };
            let lower_is_itself = {
                let mut l = c.to_lowercase();
                l.next() == Some(c) && l.next().is_none()
            };
            if !lower_is_itself || (c.is_whitespace() && c != ' ') || c == UNK_MARKER {
                return Err(VocabErrorKind::Unreachable { symbol: c, id });
            }
            ids.insert(c, id);
        }
        Ok(Vocab { symbols, ids })
    }

    /// Number of symbols, specials included (the model's output width).
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Always `false`: a valid vocabulary holds at least the four specials.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// All symbols in id order.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// The symbol of `id`, `None` outside the vocabulary.
    pub fn symbol(&self, id: usize) -> Option<&str> {
        self.symbols.get(id).map(String::as_str)
    }

    /// The id of the (already normalised) character `c`, `None` if it has none.
    pub fn id(&self, c: char) -> Option<usize> {
        self.ids.get(&c).copied()
    }

    /// Text -> token ids `[n]`, normalised as the module documentation says, without
    /// `<sos>`/`<eos>`. Characters outside the vocabulary become [`Vocab::UNK`]; a run of
    /// whitespace becomes the id of `' '` (or `UNK` if the vocabulary has no space).
    pub fn encode(&self, text: &str) -> Vec<usize> {
        let mut out = Vec::with_capacity(text.len());
        let mut space_pending = false;
        for c in text.chars() {
            if c.is_whitespace() {
                // Only a space between two non-blank characters survives, which trims
                // both ends and collapses runs in one pass.
                space_pending = !out.is_empty();
                continue;
            }
            if space_pending {
                out.push(self.id(' ').unwrap_or(Vocab::UNK));
                space_pending = false;
            }
            out.extend(c.to_lowercase().map(|l| self.id(l).unwrap_or(Vocab::UNK)));
        }
        out
    }

    /// Token ids `[n]` -> text. Stops at the first `<eos>`, skips `<pad>` and `<sos>`,
    /// and renders `<unk>` and ids outside the vocabulary as [`UNK_MARKER`]. Spaces are
    /// rendered as emitted; [`Vocab::normalize_transcript`] collapses them.
    pub fn decode(&self, ids: &[usize]) -> String {
        let mut out = String::with_capacity(ids.len());
        for &id in ids {
            match id {
                Vocab::EOS => break,
                Vocab::PAD | Vocab::SOS => {}
                _ => match self.symbols.get(id).filter(|_| id != Vocab::UNK) {
                    Some(s) => out.push_str(s),
                    None => out.push(UNK_MARKER),
                },
            }
        }
        out
    }

    /// The text `encode` sees, as a string: `decode(encode(text))`. Apply it to
    /// references and to decoded hypotheses alike before scoring.
    pub fn normalize_transcript(&self, text: &str) -> String {
        self.decode(&self.encode(text))
    }
}
