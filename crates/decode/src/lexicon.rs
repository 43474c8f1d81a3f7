//! A word list that CTC prefix beam search can hold its hypotheses to.
//!
//! A character model spells by sound: "SPEAT" for SPEAK, "CONCEATURE" for a word it
//! never heard. A [`Lexicon`] is a trie of known words over the vocabulary's symbol
//! ids; [`crate::ctc::ctc_beam_search_with`] walks it as hypotheses grow and charges
//! `oov_penalty` (natural-log units) for every word that leaves it: a word that is not
//! a prefix of a known word, or a prefix that ends at a space or at the end of the
//! utterance without being a word. The penalty is charged once per word, so a large
//! one all but forbids unknown words while a small one only tips close calls; words
//! that really are new (names, 2% of LibriSpeech test words against its LM text) can
//! still come out.
//!
//! A word's state depends only on the symbols of its hypothesis, so the search's
//! merging of equal prefixes stays exact.

use crate::error::{Error, Result};
use crate::vocab::Vocab;

/// The state of a hypothesis whose current word already left the lexicon.
pub(crate) const OUTSIDE: u32 = u32::MAX;

/// The state between words (and at the start).
pub(crate) const ROOT: u32 = 0;

/// A trie node where no word ends.
const NO_WORD: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq)]
struct Node {
    /// `(symbol, child)`, sorted by symbol.
    children: Vec<(u32, u32)>,
    /// The index (in order of first appearance) of the word that ends here;
    /// [`NO_WORD`] if none does.
    word: u32,
}

/// A trie of words over a [`Vocab`]'s symbol ids (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct Lexicon {
    nodes: Vec<Node>,
    words: usize,
    /// The vocabulary's space, which ends a word.
    space: Option<usize>,
    vocab_size: usize,
}

impl Lexicon {
    /// The words of `text` (split at white space; one per line or running text alike),
    /// normalised as transcripts are. Words holding a symbol outside `vocab` are left
    /// out; repeats count once. [`Error::Lm`] if no word is left.
    pub fn from_text(vocab: &Vocab, text: &str) -> Result<Lexicon> {
        let mut lex = Lexicon {
            nodes: vec![Node {
                children: Vec::new(),
                word: NO_WORD,
            }],
            words: 0,
            space: vocab.id(' '),
            vocab_size: vocab.len(),
        };
        for word in text.split_whitespace() {
            let ids = vocab.encode(word);
            if ids.is_empty() || ids.iter().any(|&i| i == Vocab::UNK || Some(i) == lex.space) {
                continue;
            }
            let mut node = ROOT;
            for &id in &ids {
                node = match lex.child(node, id) {
                    Some(n) => n,
                    None => {
                        let n = lex.nodes.len() as u32;
                        lex.nodes.push(Node {
                            children: Vec::new(),
                            word: NO_WORD,
                        });
                        let kids = &mut lex.nodes[node as usize].children;
                        let at = kids.partition_point(|&(s, _)| s < id as u32);
                        kids.insert(at, (id as u32, n));
                        n
                    }
                };
            }
            let end = &mut lex.nodes[node as usize].word;
            if *end == NO_WORD {
                *end = lex.words as u32;
                lex.words += 1;
            }
        }
        if lex.words == 0 {
            return Err(Error::Lm(
                "the word list holds no word of the vocabulary".into(),
            ));
        }
        Ok(lex)
    }

    /// Words held.
    pub fn len(&self) -> usize {
        self.words
    }

    /// Never true: a lexicon holds at least one word.
    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// The symbol that ends a word.
    pub(crate) fn space(&self) -> Option<usize> {
        self.space
    }

    /// Symbols of the vocabulary it was built over.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `true` if `word` (normalised as transcripts are) is in the lexicon.
    pub fn contains(&self, vocab: &Vocab, word: &str) -> bool {
        let mut node = ROOT;
        for id in vocab.encode(word) {
            match self.child(node, id) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node != ROOT && self.nodes[node as usize].word != NO_WORD
    }

    /// The index of `word` (normalised as transcripts are) among the lexicon's words
    /// in order of first appearance, if it holds it.
    pub fn index(&self, vocab: &Vocab, word: &str) -> Option<usize> {
        let mut node = ROOT;
        for id in vocab.encode(word) {
            node = self.child(node, id)?;
        }
        self.word_at(node).map(|w| w as usize)
    }

    /// The index of the word a hypothesis in `state` has just spelled, if it is one.
    pub(crate) fn word_at(&self, state: u32) -> Option<u32> {
        if state == OUTSIDE || state == ROOT {
            return None;
        }
        let w = self.nodes[state as usize].word;
        (w != NO_WORD).then_some(w)
    }

    fn child(&self, node: u32, symbol: usize) -> Option<u32> {
        let kids = &self.nodes[node as usize].children;
        kids.binary_search_by_key(&(symbol as u32), |&(s, _)| s)
            .ok()
            .map(|i| kids[i].1)
    }

    /// The state after `state` reads `symbol`, and whether a word just left the
    /// lexicon (to be charged).
    pub(crate) fn step(&self, state: u32, symbol: usize) -> (u32, bool) {
        if Some(symbol) == self.space {
            return (ROOT, self.unfinished(state));
        }
        if state == OUTSIDE {
            return (OUTSIDE, false);
        }
        match self.child(state, symbol) {
            Some(n) => (n, false),
            None => (OUTSIDE, true),
        }
    }

    /// `true` if a hypothesis ending in `state` ends inside a word that is not one
    /// (charged at a space and at the end of the utterance).
    pub(crate) fn unfinished(&self, state: u32) -> bool {
        state != OUTSIDE && state != ROOT && self.nodes[state as usize].word == NO_WORD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(lex: &Lexicon, v: &Vocab, text: &str) -> (u32, usize) {
        let mut state = ROOT;
        let mut charged = 0;
        for id in v.encode(text) {
            let (s, c) = lex.step(state, id);
            state = s;
            charged += usize::from(c);
        }
        charged += usize::from(lex.unfinished(state));
        (state, charged)
    }

    #[test]
    fn counts_each_unknown_word_once() {
        let v = Vocab::librispeech();
        let lex = Lexicon::from_text(&v, "the THEN then\nspeak don't café 42").unwrap();
        // `café` and `42` hold symbols outside the alphabet: left out.
        assert_eq!(lex.len(), 4);
        assert!(lex.contains(&v, "Then") && lex.contains(&v, "DON'T"));
        assert!(!lex.contains(&v, "th") && !lex.contains(&v, "speaks"));
        // Indices in order of first appearance, repeats and left-out words skipped.
        assert_eq!(lex.index(&v, "then"), Some(1));
        assert_eq!(lex.index(&v, "DON'T"), Some(3));
        assert_eq!(lex.index(&v, "th"), None);
        for (text, unknown) in [
            ("the speak", 0),
            ("then the", 0),
            ("speat the", 1),        // leaves the trie at `t`
            ("spea the", 1),         // a prefix, not a word, at the space
            ("the spea", 1),         // ...and at the end
            ("xyzzy plugh then", 2), // two unknown words, once each
            ("speaks", 1),           // past a word's end
            ("", 0),
        ] {
            assert_eq!(walk(&lex, &v, text).1, unknown, "{text:?}");
        }
        assert!(Lexicon::from_text(&v, "42 ...").is_err());
    }
}
