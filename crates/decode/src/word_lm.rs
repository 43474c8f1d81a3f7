//! Word n-gram language model for CTC prefix beam search.
//!
//! A character model spells by sound, and a character n-gram sees only the last few
//! letters; [`WordLm`] scores whole words given the words before them, the model that
//! decoders of character CTC systems have used since Hannun et al. (2014), who saw it
//! cut word errors by more than half over no model. It is the same interpolated
//! modified Kneser-Ney estimate as [`CharLm`](crate::CharLm) (see [`crate::lm`] for the
//! maths), over word ids: ids 0..=3 are `<pad>`, `<sos>`, `<eos>`, `<unk>`, then the
//! words of the training text seen at least `min_count` times, most frequent first.
//! Every other word is `<unk>`; so is any word holding a character outside the
//! character vocabulary.
//!
//! Text is normalised as transcripts are ([`Vocab::normalize_transcript`]: lower
//! case, single spaces) and split at spaces.
//!
//! In [`ctc_beam_search_with`](crate::ctc::ctc_beam_search_with) the model brings its
//! own [`Lexicon`] of its words: a hypothesis is charged `word_lm_weight * ln p(word |
//! words before)` when it ends a word (at a space, and at the end of the utterance,
//! where `<eos>` is scored too); a word outside the list is scored as `<unk>` and also
//! pays the search's `oov_penalty`.
//!
//! ## File format `lasr-word-lm`, version 1
//!
//! Byte for byte the `lasr-char-lm` format of [`crate::lm`] with the magic
//! `LASR-WLM`, and words for symbols: ids 0..=3 the four specials, each later one a
//! word of the character vocabulary (no space, no unknown character).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::error::{Error, LmFileErrorKind, Result};
use crate::lexicon::Lexicon;
use crate::ngram::{self, Ngram, MAX_VOCAB};
use crate::vocab::{Vocab, UNK_MARKER};

/// The word model file format's magic bytes.
pub const WORD_FORMAT_MAGIC: [u8; 8] = *ngram::KINDS[1].0;

const SPECIALS: [&str; 4] = ["<pad>", "<sos>", "<eos>", "<unk>"];

/// An order-`N` word n-gram model (see the [module documentation](self)).
#[derive(Clone)]
pub struct WordLm {
    /// The specials, then the words.
    symbols: Vec<String>,
    ids: HashMap<String, u32>,
    ngram: Ngram,
    /// The words spelled in the character vocabulary the model was built or loaded for.
    lexicon: Lexicon,
    /// Lexicon word index -> word id.
    lm_id: Vec<u32>,
    vocab_size: usize,
}

impl fmt::Debug for WordLm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WordLm")
            .field("order", &self.order())
            .field("words", &self.num_words())
            .field("contexts", &self.num_contexts())
            .field("entries", &self.num_entries())
            .finish()
    }
}

impl WordLm {
    /// Trains an order-`order` model on `lines` (one sentence each, normalised with
    /// `vocab`; empty ones are skipped) over the words seen at least `min_count` times
    /// (at most 65,532 of them: the most frequent, ties in alphabetical order).
    ///
    /// Errors ([`Error::Lm`]): `order` outside `1..=`[`crate::lm::MAX_ORDER`],
    /// `min_count` 0, or no word to keep.
    pub fn train<I>(lines: I, vocab: &Vocab, order: usize, min_count: usize) -> Result<WordLm>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        if min_count == 0 {
            return Err(Error::Lm("min_count must be at least 1".into()));
        }
        let text: Vec<String> = lines
            .into_iter()
            .map(|l| vocab.normalize_transcript(l.as_ref()))
            .filter(|l| !l.is_empty())
            .collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for w in text.iter().flat_map(|l| l.split(' ')) {
            if !w.contains(UNK_MARKER) {
                *counts.entry(w).or_insert(0) += 1;
            }
        }
        let mut kept: Vec<(&str, usize)> = counts
            .into_iter()
            .filter(|&(_, n)| n >= min_count)
            .collect();
        kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        kept.truncate(MAX_VOCAB - SPECIALS.len());
        if kept.is_empty() {
            return Err(Error::Lm(format!(
                "no word occurs {min_count} times or more in the text"
            )));
        }
        let symbols: Vec<String> = SPECIALS
            .iter()
            .copied()
            .chain(kept.iter().map(|k| k.0))
            .map(String::from)
            .collect();
        let ids: HashMap<&str, usize> = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let ngram = Ngram::train(
            text.iter().map(|l| {
                l.split(' ')
                    .map(|w| ids.get(w).copied().unwrap_or(Vocab::UNK))
                    .collect::<Vec<_>>()
            }),
            symbols.len(),
            order,
        )?;
        WordLm::from_parts(symbols, ngram, vocab)
            .map_err(|kind| Error::Lm(format!("cannot build the word model: {kind}")))
    }

    fn from_parts(
        symbols: Vec<String>,
        ngram: Ngram,
        vocab: &Vocab,
    ) -> std::result::Result<WordLm, LmFileErrorKind> {
        let words = &symbols[SPECIALS.len()..];
        let lexicon = Lexicon::from_text(vocab, &words.join("\n"))
            .map_err(|_| LmFileErrorKind::Malformed("no word of the vocabulary".into()))?;
        let mut lm_id = vec![u32::MAX; lexicon.len()];
        for (i, w) in words.iter().enumerate() {
            let id = (i + SPECIALS.len()) as u32;
            // A word must spell itself back exactly, or the search could never reach it.
            let spelled = vocab.encode(w);
            let clean = !spelled.is_empty()
                && !spelled.contains(&Vocab::UNK)
                && vocab.id(' ').is_none_or(|s| !spelled.contains(&s))
                && vocab.decode(&spelled) == *w;
            match lexicon.index(vocab, w).filter(|_| clean) {
                Some(k) if lm_id[k] == u32::MAX => lm_id[k] = id,
                _ => {
                    return Err(LmFileErrorKind::Malformed(format!(
                        "word {id} ({w:?}) is not a word of the character vocabulary"
                    )))
                }
            }
        }
        let ids = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        Ok(WordLm {
            symbols,
            ids,
            ngram,
            lexicon,
            lm_id,
            vocab_size: vocab.len(),
        })
    }

    /// The model's order `N`: it looks at the last `N - 1` words.
    pub fn order(&self) -> usize {
        self.ngram.order()
    }

    /// Words it knows (the specials not counted).
    pub fn num_words(&self) -> usize {
        self.symbols.len() - SPECIALS.len()
    }

    /// Its symbols: the four specials, then the words, most frequent first.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// Contexts stored (the empty one included).
    pub fn num_contexts(&self) -> usize {
        self.ngram.num_contexts()
    }

    /// The distinct n-grams of all orders seen in training.
    pub fn num_entries(&self) -> usize {
        self.ngram.num_entries()
    }

    /// Size of the character vocabulary its word list is spelled in.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of `word` (already normalised: lower case), `<unk>` if unknown.
    pub fn id(&self, word: &str) -> usize {
        self.ids.get(word).map_or(Vocab::UNK, |&i| i as usize)
    }

    /// Natural log of `p(next | history)` over word ids; `history` starts with
    /// `<sos>`, only its last `N - 1` ids count. `-inf` for `<pad>`, `<sos>` and ids
    /// past the model.
    pub fn log_prob(&self, history: &[usize], next: usize) -> f32 {
        self.ngram.log_prob(history, next)
    }

    /// Natural log of the probability of one line (normalised, unknown words as
    /// `<unk>`, `<eos>` included) and the number of words it predicts (with `<eos>`);
    /// `(0.0, 0)` for an empty line.
    pub fn sentence_log_prob(&self, vocab: &Vocab, line: &str) -> (f64, usize) {
        let line = vocab.normalize_transcript(line);
        if line.is_empty() {
            return (0.0, 0);
        }
        let mut seq = vec![Vocab::SOS];
        seq.extend(line.split(' ').map(|w| self.id(w)));
        seq.push(Vocab::EOS);
        let total = (1..seq.len())
            .map(|i| f64::from(self.log_prob(&seq[..i], seq[i])))
            .sum();
        (total, seq.len() - 1)
    }

    /// Perplexity per predicted word (each line's `<eos>` included) over `lines`;
    /// NaN if they hold no word.
    pub fn perplexity<I>(&self, vocab: &Vocab, lines: I) -> f64
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let (mut total, mut n) = (0.0f64, 0usize);
        for line in lines {
            let (lp, k) = self.sentence_log_prob(vocab, line.as_ref());
            total += lp;
            n += k;
        }
        if n == 0 {
            return f64::NAN;
        }
        (-total / n as f64).exp()
    }

    /// The model in the `lasr-word-lm` format (see the [module documentation](self)).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.ngram.to_file_bytes(&WORD_FORMAT_MAGIC, &self.symbols)
    }

    /// A model from bytes in the `lasr-word-lm` format, its words spelled in `vocab`.
    /// Any damage is an [`Error::LmFile`] (with no path), never a panic.
    pub fn from_bytes(bytes: &[u8], vocab: &Vocab) -> Result<WordLm> {
        parse(bytes, vocab).map_err(|kind| Error::LmFile { path: None, kind })
    }

    /// Writes [`WordLm::to_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        ngram::save(path.as_ref(), &self.to_bytes())
    }

    /// Reads a model saved by [`WordLm::save`]; errors name `path`.
    pub fn load(path: impl AsRef<Path>, vocab: &Vocab) -> Result<WordLm> {
        ngram::load(path.as_ref(), |bytes| parse(bytes, vocab))
    }

    pub(crate) fn lexicon(&self) -> &Lexicon {
        &self.lexicon
    }

    /// The word id of the word a hypothesis in lexicon state `lex` has just spelled:
    /// `<unk>` unless it is a whole word of the list.
    pub(crate) fn word_at(&self, lex: u32) -> usize {
        self.lexicon
            .word_at(lex)
            .map_or(Vocab::UNK, |k| self.lm_id[k as usize] as usize)
    }

    /// The search state at the start of an utterance.
    pub(crate) fn start(&self) -> u32 {
        self.ngram.start()
    }

    /// `(next state, ln p(word | state))`.
    pub(crate) fn score(&self, state: u32, word: usize) -> (u32, f32) {
        (
            self.ngram.advance(state, word),
            self.ngram.state_log_prob(state, word),
        )
    }
}

fn parse(bytes: &[u8], vocab: &Vocab) -> std::result::Result<WordLm, LmFileErrorKind> {
    let (symbols, ngram) = ngram::parse_file(bytes, &WORD_FORMAT_MAGIC)?;
    WordLm::from_parts(symbols, ngram, vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_walk_matches_history_lookups() {
        let v = Vocab::librispeech();
        let text = [
            "the cat sat on the mat",
            "the dog sat on the cat",
            "a cat and a dog",
            "on the mat the cat sat",
        ];
        for order in [1, 2, 3, 4] {
            let lm = WordLm::train(text, &v, order, 1).unwrap();
            for line in text
                .iter()
                .chain(&["the mat sat on a zebra", "zebra zebra the"])
            {
                let mut history = vec![Vocab::SOS];
                let mut state = lm.start();
                for w in line.split(' ').map(|w| lm.id(w)).chain([Vocab::EOS]) {
                    let (next, lp) = lm.score(state, w);
                    assert_eq!(lp.to_bits(), lm.log_prob(&history, w).to_bits(), "{line}");
                    history.push(w);
                    state = next;
                }
            }
        }
    }
}
