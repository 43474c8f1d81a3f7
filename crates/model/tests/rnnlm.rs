//! The character LSTM language model: gradients, batching, learning, its file.

use lasr_decode::Vocab;
use lasr_model::{train_rnnlm, RnnLm, RnnLmConfig, RnnLmTrainOptions};
use lasr_nn::gradcheck::check_params;
use lasr_nn::{Module, WeightFormat};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn tiny(layers: usize, dropout: f32) -> RnnLm {
    sized(5, 7, layers, dropout)
}

fn sized(embedding_dim: usize, hidden: usize, layers: usize, dropout: f32) -> RnnLm {
    let config = RnnLmConfig {
        vocab_size: Vocab::librispeech().len(),
        embedding_dim,
        hidden,
        layers,
        dropout,
        reversed: false,
    };
    RnnLm::new(config, &mut ChaCha8Rng::seed_from_u64(3)).unwrap()
}

/// `refs`' log-probabilities by `lm`'s prefix-sharing scorer in f32.
fn f32_scores(lm: &RnnLm, refs: &[&[usize]]) -> Vec<f64> {
    lm.scorer(&Vocab::librispeech(), WeightFormat::F32)
        .unwrap()
        .log_probs(refs)
        .unwrap()
}

/// Equal up to f32 summation order.
fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
    }
}

fn ids(texts: &[&str]) -> Vec<Vec<usize>> {
    let v = Vocab::librispeech();
    texts.iter().map(|t| v.encode(t)).collect()
}

#[test]
fn gradients_match_finite_differences_with_dropout_and_padding() {
    // Two layers, dropout on, and sentences of three lengths (one empty: `<eos>`
    // alone), so padding, masks and the layer stack are all in the check.
    let lm = tiny(2, 0.3);
    let seqs = ids(&["ab c", "", "zz'y a"]);
    let refs: Vec<&[usize]> = seqs.iter().map(Vec::as_slice).collect();
    let seeds = [11u64, 12, 13];
    let mut grads = lm.zeros_like();
    let (nll, count) = lm.train_step(&refs, Some(&seeds), 1.0, &mut grads).unwrap();
    assert_eq!(count, 4 + 1 + 1 + 6 + 1);
    assert!(nll > 0.0);
    let loss = |m: &RnnLm| {
        let mut g = m.zeros_like();
        m.train_step(&refs, Some(&seeds), 1.0, &mut g).unwrap().0
    };
    // The loss sums 13 f32 cross-entropies, whose rounding over 2 eps is ~1e-4: the
    // floor keeps gradients that small from failing on noise alone.
    let reports = check_params(&lm, &grads, &loss, 1e-2, 12, 1e-2);
    assert_eq!(reports.len(), 1 + 2 * 4 + 2, "every tensor is checked");
    for r in &reports {
        eprintln!("{r:?}");
        assert!(r.error < 1e-2, "{r:?}");
    }
    // The scale multiplies the gradient and nothing else.
    let mut half = lm.zeros_like();
    let (nll_half, _) = lm.train_step(&refs, Some(&seeds), 0.5, &mut half).unwrap();
    assert_eq!(nll_half, nll);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    grads.visit("", &mut |_, t| a.extend(t.iter().copied()));
    half.visit("", &mut |_, t| b.extend(t.iter().copied()));
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| (0.5 * x - y).abs() <= 1e-6 * x.abs()));
}

#[test]
fn a_batch_scores_each_sentence_as_it_scores_alone() {
    let lm = tiny(2, 0.3);
    let seqs = ids(&["hello there", "a", "", "it's"]);
    let refs: Vec<&[usize]> = seqs.iter().map(Vec::as_slice).collect();
    let together = lm.log_probs(&refs).unwrap();
    for (s, &lp) in refs.iter().zip(&together) {
        let alone = lm.log_probs(&[s]).unwrap()[0];
        assert!((alone - lp).abs() < 1e-4, "{alone} vs {lp}");
        assert!(lp < 0.0);
    }
    // Without dropout the training pass's loss is the same sum.
    let mut g = lm.zeros_like();
    let (nll, _) = lm.train_step(&refs, None, 1.0, &mut g).unwrap();
    let sum: f64 = together.iter().sum();
    assert!((nll + sum).abs() < 1e-3 * nll, "{nll} vs {sum}");
    // The next-character distributions are distributions: the probabilities of
    // every one-character sentence plus every longer continuation of `<sos>` sum
    // to one, so the one-character sentences alone sum to less.
    let v = Vocab::librispeech();
    let singles: Vec<Vec<usize>> = (Vocab::UNK + 1..v.len()).map(|i| vec![i]).collect();
    let refs: Vec<&[usize]> = singles.iter().map(Vec::as_slice).collect();
    let total: f64 = lm.log_probs(&refs).unwrap().iter().map(|l| l.exp()).sum();
    assert!(total > 0.0 && total < 1.0, "{total}");
    // A token the model has no row for is refused, not read out of bounds.
    assert!(lm.log_probs(&[&[v.len()][..]]).is_err());
}

#[test]
fn the_prefix_sharing_scorer_agrees_with_the_batched_forward() {
    // Shared prefixes, a sentence that is a prefix of another, a repeat, an empty
    // one: every way the trie can branch or end.
    let lm = sized(6, 9, 2, 0.2);
    let seqs = ids(&[
        "the cat",
        "the cab",
        "the",
        "the cat sat",
        "",
        "a",
        "the cat",
        "tha",
    ]);
    let refs: Vec<&[usize]> = seqs.iter().map(Vec::as_slice).collect();
    let want = lm.log_probs(&refs).unwrap();
    let got = f32_scores(&lm, &refs);
    assert_close(&got, &want);
    assert_eq!(got[0], got[6]);
    let v = Vocab::librispeech();
    // In int8 the recurrent products round the weights: close, not equal.
    let int8 = lm
        .scorer(&v, WeightFormat::Int8)
        .unwrap()
        .log_probs(&refs)
        .unwrap();
    for (g, w) in int8.iter().zip(&want) {
        assert!(
            (g - w).abs() < 0.05 * w.abs().max(1.0),
            "{int8:?} vs {want:?}"
        );
    }
    assert_ne!(int8, got);
    let scorer = lm.scorer(&v, WeightFormat::F32).unwrap();
    assert!(scorer.log_probs(&[]).unwrap().is_empty());
    assert!(scorer.log_probs(&[&[99][..]]).is_err());
}

#[test]
fn a_backward_model_scores_sentences_turned_around_and_keeps_its_direction_on_file() {
    let mut lm = sized(6, 9, 1, 0.0);
    lm.config.reversed = true;
    let seqs = ids(&["the cat", "the cab", "tac eht", "", "the"]);
    let refs: Vec<&[usize]> = seqs.iter().map(Vec::as_slice).collect();
    let turned: Vec<Vec<usize>> = seqs
        .iter()
        .map(|s| s.iter().rev().copied().collect())
        .collect();
    let turned_refs: Vec<&[usize]> = turned.iter().map(Vec::as_slice).collect();
    // The model's own methods read as the model reads; the scorer takes reading order.
    let want = lm.log_probs(&turned_refs).unwrap();
    let got = f32_scores(&lm, &refs);
    assert_close(&got, &want);
    let v = Vocab::librispeech();
    // "the cat" and its mirror image "tac eht" trade places.
    let as_read = lm.log_probs(&refs).unwrap();
    assert!((got[0] - as_read[2]).abs() < 1e-4 && (got[2] - as_read[0]).abs() < 1e-4);
    assert!((got[0] - as_read[0]).abs() > 1e-4);
    // The direction is part of the file; a forward file says nothing of it.
    let (back, _) = RnnLm::from_bytes(&lm.to_bytes(&v).unwrap()).unwrap();
    assert!(back.config.reversed);
    let forward = sized(6, 9, 1, 0.0);
    let bytes = forward.to_bytes(&v).unwrap();
    let (_, st) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert!(!st.metadata().as_ref().unwrap()["config"].contains("reversed"));
}

#[test]
fn it_learns_its_sentences_and_prefers_them_to_their_anagrams() {
    let mut lm = sized(16, 32, 1, 0.0);
    let train = ids(&["the cat sat", "a dog ran", "the dog sat", "a cat ran"]);
    let shuffled = ids(&["tca eht sat", "a odg anr", "het god ast", "a act rna"]);
    let options = RnnLmTrainOptions {
        epochs: 150,
        learning_rate: 2e-2,
        batch_tokens: 24,
        warmup_steps: 5,
        ..Default::default()
    };
    let mut perplexities = Vec::new();
    train_rnnlm(
        &mut lm,
        &train,
        &train,
        &options,
        |_| {},
        |_, e| {
            perplexities.push(e.valid_perplexity);
            Ok(())
        },
    )
    .unwrap();
    let first = perplexities[0];
    let last = *perplexities.last().unwrap();
    // 32 symbols: a uniform guess is perplexity 32. Each sentence's first word leaves
    // two choices and its second leaves two, so about 2^(2/12) per character remains.
    assert!(first > 10.0, "{first}");
    assert!(last < 1.5, "{perplexities:?}");
    let score = |s: &[Vec<usize>]| {
        let refs: Vec<&[usize]> = s.iter().map(Vec::as_slice).collect();
        lm.log_probs(&refs).unwrap()
    };
    for (a, b) in score(&train).iter().zip(score(&shuffled)) {
        assert!(*a > b + 10.0, "{a} vs {b}");
    }
}

#[test]
fn a_non_finite_loss_stops_training_before_the_update() {
    let mut lm = tiny(1, 0.0);
    lm.output.weight[(0, 0)] = f32::NAN;
    let before = lm.clone();
    let train = ids(&["a b", "c"]);
    let err = train_rnnlm(
        &mut lm,
        &train,
        &train,
        &RnnLmTrainOptions::default(),
        |_| {},
        |_, _| Ok(()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("loss became NaN at step 1"), "{err}");
    // Bitwise: NaN != NaN, so compare the bits.
    let bits = |m: &RnnLm| {
        let mut v = Vec::new();
        m.visit("", &mut |_, t| v.extend(t.iter().map(|x| x.to_bits())));
        v
    };
    assert_eq!(bits(&lm), bits(&before));
}

#[test]
fn the_file_keeps_every_weight_config_and_vocabulary() {
    let lm = tiny(2, 0.1);
    let v = Vocab::librispeech();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lm.safetensors");
    lm.save(&path, &v).unwrap();
    let (back, vocab) = RnnLm::load(&path).unwrap();
    assert_eq!(back, lm);
    assert_eq!(vocab, v);
    // PyTorch's names, for a module with `embedding`, `rnn` (nn.LSTM) and `output`.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "embedding.weight",
            "output.bias",
            "output.weight",
            "rnn.bias_hh_l0",
            "rnn.bias_hh_l1",
            "rnn.bias_ih_l0",
            "rnn.bias_ih_l1",
            "rnn.weight_hh_l0",
            "rnn.weight_hh_l1",
            "rnn.weight_ih_l0",
            "rnn.weight_ih_l1",
        ]
    );
    // Another kind of safetensors file is refused by name, naming the path.
    let other = dir.path().join("other.safetensors");
    lasr_nn::checkpoint::save(&other, &lm, &Default::default()).unwrap();
    let err = RnnLm::load(&other).unwrap_err().to_string();
    assert!(err.contains("other.safetensors"), "{err}");
    assert!(err.contains("not an LSTM language model"), "{err}");
    // A vocabulary that does not fit the output layer is refused on writing.
    let small = Vocab::new(["<pad>", "<sos>", "<eos>", "<unk>", "a"]).unwrap();
    assert!(lm.to_bytes(&small).is_err());
    // A truncated file is an error, not a panic.
    std::fs::write(&other, &bytes[..bytes.len() / 2]).unwrap();
    assert!(RnnLm::load(&other).is_err());
    // A config asking for far more than the file holds is refused before anything is
    // allocated (a billion-wide LSTM would abort the process).
    let mut meta = lasr_nn::checkpoint::metadata(&bytes).unwrap();
    let mut config = lm.config.clone();
    config.hidden = 1_000_000_000;
    meta.insert("config".into(), serde_json::to_string(&config).unwrap());
    let hostile = lasr_nn::checkpoint::to_bytes(&lm, "", &meta).unwrap();
    let err = RnnLm::from_bytes(&hostile).unwrap_err().to_string();
    assert!(
        err.contains("hidden 1000000000") && err.contains("values"),
        "{err}"
    );
    // A scorer for another vocabulary is refused.
    assert!(lm.scorer(&small, WeightFormat::F32).is_err());
}

#[test]
fn the_shipped_lstm_model_reads_english_and_fits_the_shipped_model() {
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let (lm, vocab) = RnnLm::load(&assets.join("rnnlm.safetensors")).unwrap();
    let model = lasr_model::ModelFile::load(&assets.join("model.safetensors")).unwrap();
    assert_eq!(vocab, model.vocab);
    let decode = model.decode.clone().unwrap();
    assert!(
        decode.rnnlm_share > 0.0 && decode.rnnlm_share <= 2.0,
        "{decode:?}"
    );
    // A sentence of the kind it was trained on against the same letters shuffled,
    // and against a sentence of words it has seen in an order it has not.
    let scorer = lm.scorer(&vocab, WeightFormat::Int8).unwrap();
    let s = ids(&[
        "and then he went back to the house",
        "dna neht eh tnew kcab ot eht esouh",
        "house the to back went he then and",
    ]);
    let refs: Vec<&[usize]> = s.iter().map(Vec::as_slice).collect();
    let lp = scorer.log_probs(&refs).unwrap();
    assert!(lp[0] > lp[2] + 5.0 && lp[2] > lp[1] + 20.0, "{lp:?}");
    // About its dev-clean perplexity (3.47) on a plain sentence: under 5 per character.
    assert!((-lp[0] / (refs[0].len() + 1) as f64).exp() < 5.0, "{lp:?}");
}
