//! The word n-gram model: proper distributions, the file format, and its errors.

use std::path::PathBuf;

use lasr_decode::{CharLm, LmFileErrorKind, Vocab, WordLm};

const TEXT: [&str; 6] = [
    "THE CAT SAT ON THE MAT",
    "the dog sat on the cat",
    "A CAT AND A DOG",
    "on the mat the cat sat",
    "the cat's hat",
    "the dog café",
];

fn model(order: usize, min_count: usize) -> WordLm {
    WordLm::train(TEXT, &Vocab::librispeech(), order, min_count).unwrap()
}

/// Every history of up to three words over the model's ids, `<sos>` first or not.
fn histories(lm: &WordLm) -> Vec<Vec<usize>> {
    let n = lm.symbols().len();
    let mut out = vec![vec![Vocab::SOS]];
    for a in 3..n {
        out.push(vec![Vocab::SOS, a]);
        for b in 3..n {
            out.push(vec![a, b]);
            out.push(vec![Vocab::SOS, a, b]);
        }
    }
    out
}

#[test]
fn every_distribution_sums_to_one() {
    for order in [1, 2, 3] {
        let lm = model(order, 1);
        let n = lm.symbols().len();
        for h in histories(&lm) {
            let total: f64 = (0..n).map(|w| f64::from(lm.log_prob(&h, w)).exp()).sum();
            assert!((total - 1.0).abs() < 1e-5, "order {order} {h:?}: {total}");
            assert_eq!(lm.log_prob(&h, Vocab::PAD), f32::NEG_INFINITY);
            assert_eq!(lm.log_prob(&h, Vocab::SOS), f32::NEG_INFINITY);
        }
    }
}

#[test]
fn words_are_normalised_counted_and_ranked_by_frequency() {
    let v = Vocab::librispeech();
    let lm = model(2, 1);
    // "the" is the most frequent word; "café" holds a character outside the
    // alphabet: never a word.
    assert_eq!(lm.symbols()[4], "the");
    assert_eq!(lm.id("the"), 4);
    assert_eq!(lm.id("café"), Vocab::UNK);
    assert!(lm.symbols().iter().all(|w| !w.contains('é')));
    assert!(lm.id("cat's") > 3);
    // Seen bigrams beat unseen ones.
    let the = [Vocab::SOS, lm.id("the")];
    assert!(lm.log_prob(&the, lm.id("cat")) > lm.log_prob(&the, lm.id("and")));
    // min_count 2 turns the words seen once into <unk>.
    let pruned = model(2, 2);
    assert!(pruned.num_words() < lm.num_words());
    assert_eq!(pruned.id("hat"), Vocab::UNK);
    let (lp, n) = pruned.sentence_log_prob(&v, "The hat SAT");
    assert_eq!(n, 4);
    assert!(lp < 0.0 && lp.is_finite());
    assert_eq!(pruned.sentence_log_prob(&v, "  "), (0.0, 0));
    assert!(WordLm::train(TEXT, &v, 2, 100).is_err());
    assert!(WordLm::train(TEXT, &v, 0, 1).is_err());
    assert!(WordLm::train(TEXT, &v, 2, 0).is_err());
    // Perplexity on its own text is below the vocabulary size.
    let ppl = lm.perplexity(&v, TEXT);
    assert!(ppl > 1.0 && ppl < lm.symbols().len() as f64, "{ppl}");
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lasr-word-lm-{}-{name}", std::process::id()))
}

#[test]
fn round_trip_keeps_every_log_prob_and_kinds_are_told_apart() {
    let v = Vocab::librispeech();
    let lm = model(3, 1);
    let path = temp_path("rt.bin");
    lm.save(&path).unwrap();
    let back = WordLm::load(&path, &v).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(back.symbols(), lm.symbols());
    assert_eq!(back.to_bytes(), lm.to_bytes());
    for h in histories(&lm) {
        for w in 0..lm.symbols().len() {
            assert_eq!(back.log_prob(&h, w).to_bits(), lm.log_prob(&h, w).to_bits());
        }
    }
    let bytes = lm.to_bytes();
    assert_eq!(&bytes[..8], b"LASR-WLM");

    // A character model is not a word model, and the other way round: each says what
    // it found.
    let chars = CharLm::train(TEXT, &v, 3).unwrap();
    let err = WordLm::from_bytes(&chars.to_bytes(), &v).unwrap_err();
    assert!(matches!(
        err.lm_file_kind(),
        Some(LmFileErrorKind::OtherKind { .. })
    ));
    assert!(
        err.to_string().contains("character language model"),
        "{err}"
    );
    let err = CharLm::from_bytes(&bytes, &v).unwrap_err();
    assert!(err.to_string().contains("word language model"), "{err}");

    // Truncation and flipped bits are errors, never panics.
    for cut in [0, 4, 8, 12, bytes.len() / 2, bytes.len() - 1] {
        assert!(WordLm::from_bytes(&bytes[..cut], &v).is_err(), "cut {cut}");
    }
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x10;
    assert!(matches!(
        WordLm::from_bytes(&flipped, &v).unwrap_err().lm_file_kind(),
        Some(LmFileErrorKind::Damaged)
    ));

    // Words spelled with characters the model's alphabet lacks are refused on load.
    let digits = Vocab::new(["<pad>", "<sos>", "<eos>", "<unk>", " ", "a", "t"]).unwrap();
    let err = WordLm::from_bytes(&bytes, &digits).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a word of the character vocabulary"),
        "{err}"
    );
    let err = WordLm::load(temp_path("missing.bin"), &v).unwrap_err();
    assert!(err.to_string().contains("missing.bin"), "{err}");
}
