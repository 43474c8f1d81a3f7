//! The character vocabulary: the LibriSpeech symbol set, normalisation, round trips,
//! unknown characters, validation of other symbol lists, serialisation.

use lasr_decode::{Error, Vocab, VocabErrorKind, UNK_MARKER};

const SPECIALS: [&str; 4] = ["<pad>", "<sos>", "<eos>", "<unk>"];

/// Transcripts in LibriSpeech's style: upper case, apostrophes, no other punctuation.
const LINES: [&str; 4] = [
    "HE HOPED THERE WOULD BE STEW FOR DINNER WITH TURNIPS AND A FEW POTATOES",
    "I'M AFRAID THE CAPTAIN'S BOAT WON'T BE BACK BEFORE THE TIDE TURNS",
    "SHE SAID NOTHING BUT LOOKED AT THE OLD MAN'S HANDS",
    "QUIETLY THE ZEALOUS JUDGE EXAMINED EVERY WAXY PUZZLE",
];

fn kind(e: Error) -> VocabErrorKind {
    e.vocab_kind().cloned().expect("a vocabulary error")
}

fn with_specials(rest: &[&str]) -> Vec<String> {
    SPECIALS.iter().chain(rest).map(|s| s.to_string()).collect()
}

#[test]
fn librispeech_has_the_32_documented_ids() {
    let v = Vocab::librispeech();
    assert_eq!(v.len(), 32);
    assert!(!v.is_empty());
    for (id, s) in SPECIALS.iter().enumerate() {
        assert_eq!(v.symbol(id), Some(*s));
    }
    assert_eq!(
        (Vocab::PAD, Vocab::SOS, Vocab::EOS, Vocab::UNK),
        (0, 1, 2, 3)
    );
    assert_eq!(v.id(' '), Some(4));
    assert_eq!(v.id('\''), Some(5));
    for (i, c) in ('a'..='z').enumerate() {
        assert_eq!(v.id(c), Some(6 + i));
        assert_eq!(v.symbol(6 + i), Some(c.to_string().as_str()));
    }
    assert_eq!(v.id('A'), None);
    assert_eq!(v.symbol(32), None);
    // The built-in list passes the same validation as any other.
    assert_eq!(Vocab::new(v.symbols().to_vec()).unwrap(), v);
}

#[test]
fn encodes_hand_computed_ids() {
    let v = Vocab::librispeech();
    // h = 6 + 7, e = 6 + 4, o = 6 + 14, p = 6 + 15, d = 6 + 3, space = 4.
    assert_eq!(v.encode("HE HOPED"), [13, 10, 4, 13, 20, 21, 10, 9]);
    // n = 6 + 13, t = 6 + 19, apostrophe = 5.
    assert_eq!(v.encode("DON'T"), [9, 20, 19, 5, 25]);
    assert!(v.encode("").is_empty());
    assert!(v.encode(" \t\n ").is_empty());
}

#[test]
fn librispeech_lines_round_trip_in_lower_case() {
    let v = Vocab::librispeech();
    for line in LINES {
        let ids = v.encode(line);
        assert_eq!(ids.len(), line.len());
        assert!(!ids.contains(&Vocab::UNK), "{line}");
        assert!(ids.iter().all(|i| (4..32).contains(i)));
        assert_eq!(v.decode(&ids), line.to_lowercase());
        assert_eq!(v.normalize_transcript(line), line.to_lowercase());
    }
}

#[test]
fn whitespace_runs_collapse_and_ends_are_trimmed() {
    let v = Vocab::librispeech();
    let messy = "  \tHE  HOPED\n\nTHERE \r\n WOULD\u{00a0}BE   ";
    assert_eq!(v.encode(messy), v.encode("he hoped there would be"));
    assert_eq!(v.normalize_transcript(messy), "he hoped there would be");
}

#[test]
fn unknown_characters_become_unk_and_render_as_the_marker() {
    let v = Vocab::librispeech();
    let ids = v.encode("CAFÉ NO. 5");
    let u = Vocab::UNK;
    assert_eq!(ids, [8, 6, 11, u, 4, 19, 20, u, 4, u]);
    let m = UNK_MARKER;
    assert_eq!(v.decode(&ids), format!("caf{m} no{m} {m}"));
    // The marker is one character, so an unknown costs one unit in CER.
    assert_eq!(v.normalize_transcript("Ä").chars().count(), 1);
    // Text that already holds the marker encodes it as unknown too.
    assert_eq!(v.encode(&m.to_string()), [u]);
}

#[test]
fn decode_stops_at_eos_and_skips_pad_and_sos() {
    let v = Vocab::librispeech();
    let h = v.id('h').unwrap();
    let i = v.id('i').unwrap();
    let ids = [Vocab::SOS, h, Vocab::PAD, i, Vocab::EOS, h, h];
    assert_eq!(v.decode(&ids), "hi");
    assert_eq!(
        v.decode(&[h, Vocab::UNK, 999, i]),
        format!("h{UNK_MARKER}{UNK_MARKER}i")
    );
    assert_eq!(v.decode(&[Vocab::EOS, h]), "");
}

#[test]
fn normalisation_is_decode_of_encode_and_idempotent() {
    let v = Vocab::librispeech();
    let samples = [
        LINES[1],
        "  Mixed CASE,\twith   punctuation!  ",
        "naïve café — 42 ",
        "",
        "'",
    ];
    for s in samples {
        let n = v.normalize_transcript(s);
        assert_eq!(n, v.decode(&v.encode(s)));
        assert_eq!(v.normalize_transcript(&n), n, "{s:?}");
        assert_eq!(v.encode(&n), v.encode(s), "{s:?}");
    }
    assert_eq!(
        v.normalize_transcript("  Mixed CASE,\twith   punctuation!  "),
        format!("mixed case{UNK_MARKER} with punctuation{UNK_MARKER}")
    );
}

#[test]
fn a_custom_symbol_list_encodes_its_own_characters() {
    let v = Vocab::new(with_specials(&[" ", "é", "a"])).unwrap();
    assert_eq!(v.len(), 7);
    assert_eq!(v.encode("É A"), [5, 4, 6]);
    assert_eq!(v.encode("b"), [Vocab::UNK]);
    // Without a space symbol, word breaks are unknown too, not silently dropped.
    let no_space = Vocab::new(with_specials(&["a"])).unwrap();
    assert_eq!(no_space.encode("a a"), [4, Vocab::UNK, 4]);
}

#[test]
fn invalid_symbol_lists_are_typed_errors() {
    let short: Vec<&str> = SPECIALS[..3].to_vec();
    assert_eq!(
        kind(Vocab::new(short).unwrap_err()),
        VocabErrorKind::MissingSpecial {
            expected: "<unk>",
            id: 3,
            found: None
        }
    );
    assert_eq!(
        kind(Vocab::new(["<sos>", "<pad>", "<eos>", "<unk>"]).unwrap_err()),
        VocabErrorKind::MissingSpecial {
            expected: "<pad>",
            id: 0,
            found: Some("<sos>".into())
        }
    );
    assert_eq!(
        kind(Vocab::new(with_specials(&["a", "b", "a"])).unwrap_err()),
        VocabErrorKind::Duplicate {
            symbol: "a".into(),
            first: 4,
            second: 6
        }
    );
    assert_eq!(
        kind(Vocab::new(with_specials(&["<eos>"])).unwrap_err()),
        VocabErrorKind::Duplicate {
            symbol: "<eos>".into(),
            first: 2,
            second: 4
        }
    );
    for bad in ["ab", "", "<b>"] {
        assert_eq!(
            kind(Vocab::new(with_specials(&["a", bad])).unwrap_err()),
            VocabErrorKind::NotOneChar {
                symbol: bad.into(),
                id: 5
            }
        );
    }
    let marker = UNK_MARKER.to_string();
    for (bad, c) in [("A", 'A'), ("\t", '\t'), (marker.as_str(), UNK_MARKER)] {
        assert_eq!(
            kind(Vocab::new(with_specials(&[bad])).unwrap_err()),
            VocabErrorKind::Unreachable { symbol: c, id: 4 }
        );
    }
    let msg = Vocab::new(with_specials(&["a", "a"]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("\"a\"") && msg.contains("4") && msg.contains("5"),
        "{msg}"
    );
}

#[test]
fn serialises_as_its_symbol_list_and_validates_on_load() {
    let v = Vocab::librispeech();
    let json = serde_json::to_string(&v).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let symbols = value["symbols"].as_array().unwrap();
    assert_eq!(symbols.len(), 32);
    assert_eq!(symbols[2], "<eos>");
    assert_eq!(symbols[31], "z");
    let back: Vocab = serde_json::from_str(&json).unwrap();
    assert_eq!(back, v);
    assert_eq!(back.encode(LINES[0]), v.encode(LINES[0]));

    let dup = r#"{"symbols": ["<pad>", "<sos>", "<eos>", "<unk>", "a", "a"]}"#;
    let err = serde_json::from_str::<Vocab>(dup).unwrap_err().to_string();
    assert!(err.contains("appears at ids 4 and 5"), "{err}");
    let extra = r#"{"symbols": ["<pad>", "<sos>", "<eos>", "<unk>"], "size": 4}"#;
    assert!(serde_json::from_str::<Vocab>(extra).is_err());
}
