//! Word and character error rates by Levenshtein alignment.
//!
//! Every edit costs 1. Among alignments of equal cost the one chosen prefers, cell by
//! cell from the end, a match or substitution, then a deletion, then an insertion; so
//! `ref "a b" / hyp "b c"` counts two substitutions, not a deletion and an insertion.
//! The total (and so the rate) does not depend on this choice, only its split does.
//!
//! Rates over a corpus are computed from summed [`ErrorCounts`] (total edits over total
//! reference units), never as a mean of per-utterance rates, which would weigh a
//! one-word utterance like a fifty-word one.
//!
//! Neither [`wer`] nor [`cer`] changes case or spelling: pass both sides through
//! [`Vocab::normalize_transcript`](crate::Vocab::normalize_transcript) first.
//! Time is O(n m) in the two lengths; counting needs O(min(n, m)) memory, [`align`]
//! O(n m) bytes.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Edit counts of one or many aligned utterances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Reference units replaced by a different hypothesis unit.
    pub substitutions: usize,
    /// Reference units missing from the hypothesis.
    pub deletions: usize,
    /// Hypothesis units with no reference counterpart.
    pub insertions: usize,
    /// Units (words or characters) in the reference.
    pub reference_len: usize,
}

impl ErrorCounts {
    /// Substitutions + deletions + insertions.
    pub fn edits(&self) -> usize {
        self.substitutions + self.deletions + self.insertions
    }

    /// Reference units the hypothesis got right.
    pub fn hits(&self) -> usize {
        self.reference_len - self.substitutions - self.deletions
    }

    /// Edits per reference unit (0.25 is 25 %).
    ///
    /// An empty reference counts as one unit in the denominator, so the rate stays
    /// finite: 0 when the hypothesis is empty too, otherwise the number of inserted
    /// units. Such an utterance is only meaningful summed into a corpus total.
    pub fn rate(&self) -> f64 {
        self.edits() as f64 / self.reference_len.max(1) as f64
    }

    /// Counts of an alignment from [`align`]; `reference_len` is the number of ops that
    /// consume a reference unit.
    pub fn from_alignment(ops: &[EditOp]) -> ErrorCounts {
        let mut c = ErrorCounts::default();
        for op in ops {
            match op {
                EditOp::Match => c.reference_len += 1,
                EditOp::Substitution => {
                    c.substitutions += 1;
                    c.reference_len += 1;
                }
                EditOp::Deletion => {
                    c.deletions += 1;
                    c.reference_len += 1;
                }
                EditOp::Insertion => c.insertions += 1,
            }
        }
        c
    }
}

impl Add for ErrorCounts {
    type Output = ErrorCounts;

    fn add(mut self, rhs: ErrorCounts) -> ErrorCounts {
        self += rhs;
        self
    }
}

impl AddAssign for ErrorCounts {
    fn add_assign(&mut self, rhs: ErrorCounts) {
        self.substitutions += rhs.substitutions;
        self.deletions += rhs.deletions;
        self.insertions += rhs.insertions;
        self.reference_len += rhs.reference_len;
    }
}

impl Sum for ErrorCounts {
    fn sum<I: Iterator<Item = ErrorCounts>>(iter: I) -> ErrorCounts {
        iter.fold(ErrorCounts::default(), Add::add)
    }
}

impl<'a> Sum<&'a ErrorCounts> for ErrorCounts {
    fn sum<I: Iterator<Item = &'a ErrorCounts>>(iter: I) -> ErrorCounts {
        iter.copied().sum()
    }
}

/// One step of an alignment, walking reference and hypothesis left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EditOp {
    /// Consumes one unit of each; they are equal.
    Match,
    /// Consumes one unit of each; they differ.
    Substitution,
    /// Consumes one reference unit.
    Deletion,
    /// Consumes one hypothesis unit.
    Insertion,
}

/// Words of `text`: split on any run of whitespace, ends ignored.
pub fn word_units(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// Characters of `text` with its words joined by single spaces, so that CER and WER
/// agree on what separates words.
pub fn char_units(text: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len());
    for (i, w) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.extend(w.chars());
    }
    out
}

/// Word error counts of `hypothesis` against `reference` (units: [`word_units`]).
pub fn wer(reference: &str, hypothesis: &str) -> ErrorCounts {
    error_counts(&word_units(reference), &word_units(hypothesis))
}

/// Character error counts of `hypothesis` against `reference` (units: [`char_units`],
/// spaces between words included).
pub fn cer(reference: &str, hypothesis: &str) -> ErrorCounts {
    error_counts(&char_units(reference), &char_units(hypothesis))
}

/// Minimum-edit counts between `reference` `[n]` and `hypothesis` `[m]`, with the
/// tie rule of the module documentation; equal to
/// `ErrorCounts::from_alignment(&align(reference, hypothesis))` but in O(min(n, m))
/// memory.
pub fn error_counts<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> ErrorCounts {
    // One row of the DP, along the shorter sequence. Each cell carries the counts of
    // its chosen path, so no backtrace (and no full matrix) is needed; the choice
    // depends only on the three neighbours, so it is the same path a backtrace with
    // the same preference would take, whichever sequence runs along the row.
    let ref_along_row = reference.len() < hypothesis.len();
    let (row_seq, col_seq) = if ref_along_row {
        (reference, hypothesis)
    } else {
        (hypothesis, reference)
    };
    let step = |c: Cell, op: EditOp| -> Cell {
        let mut c = c;
        c.cost += u32::from(op != EditOp::Match);
        match op {
            EditOp::Match => {}
            EditOp::Substitution => c.subs += 1,
            EditOp::Deletion => c.dels += 1,
            EditOp::Insertion => c.ins += 1,
        }
        c
    };
    // Moving along the row consumes a `row_seq` unit: an insertion when the row runs
    // over the hypothesis, a deletion when it runs over the reference.
    let (along_row, along_col) = if ref_along_row {
        (EditOp::Deletion, EditOp::Insertion)
    } else {
        (EditOp::Insertion, EditOp::Deletion)
    };
    let mut row: Vec<Cell> = Vec::with_capacity(row_seq.len() + 1);
    row.push(Cell::default());
    for j in 0..row_seq.len() {
        row.push(step(row[j], along_row));
    }
    for b in col_seq {
        let mut diag = row[0];
        row[0] = step(row[0], along_col);
        for (j, a) in row_seq.iter().enumerate() {
            let up = row[j + 1];
            let left = row[j];
            let d = step(
                diag,
                if a == b {
                    EditOp::Match
                } else {
                    EditOp::Substitution
                },
            );
            let u = step(up, along_col);
            let l = step(left, along_row);
            let (del, ins) = if ref_along_row { (l, u) } else { (u, l) };
            let mut best = d;
            if del.cost < best.cost {
                best = del;
            }
            if ins.cost < best.cost {
                best = ins;
            }
            diag = up;
            row[j + 1] = best;
        }
    }
    let end = row[row_seq.len()];
    ErrorCounts {
        substitutions: end.subs,
        deletions: end.dels,
        insertions: end.ins,
        reference_len: reference.len(),
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    cost: u32,
    subs: usize,
    dels: usize,
    ins: usize,
}

/// A minimum-edit alignment of `reference` `[n]` and `hypothesis` `[m]`, left to right,
/// with the tie rule of the module documentation; for printing. Holds one byte per
/// cell of the `(n + 1) x (m + 1)` table while it works.
pub fn align<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> Vec<EditOp> {
    let (n, m) = (reference.len(), hypothesis.len());
    let w = m + 1;
    // Back-pointers only; costs need just two rows.
    let mut from = vec![EditOp::Match; (n + 1) * w];
    let mut prev: Vec<usize> = (0..=m).collect();
    let mut cur = vec![0usize; w];
    from[1..w].fill(EditOp::Insertion);
    for i in 1..=n {
        cur[0] = i;
        from[i * w] = EditOp::Deletion;
        for j in 1..=m {
            let same = reference[i - 1] == hypothesis[j - 1];
            let mut best = (
                prev[j - 1] + usize::from(!same),
                if same {
                    EditOp::Match
                } else {
                    EditOp::Substitution
                },
            );
            if prev[j] + 1 < best.0 {
                best = (prev[j] + 1, EditOp::Deletion);
            }
            if cur[j - 1] + 1 < best.0 {
                best = (cur[j - 1] + 1, EditOp::Insertion);
            }
            cur[j] = best.0;
            from[i * w + j] = best.1;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let mut ops = Vec::with_capacity(n.max(m));
    let (mut i, mut j) = (n, m);
    while i > 0 || j > 0 {
        let op = from[i * w + j];
        ops.push(op);
        match op {
            EditOp::Match | EditOp::Substitution => {
                i -= 1;
                j -= 1;
            }
            EditOp::Deletion => i -= 1,
            EditOp::Insertion => j -= 1,
        }
    }
    ops.reverse();
    ops
}
