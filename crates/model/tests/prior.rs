//! The CTC label prior: measuring it, keeping it in the file, dividing it out when
//! decoding, and dropping it when the output it describes changes.

use lasr_decode::Vocab;
use lasr_features::FrontEndConfig;
use lasr_model::{CtcPrior, DecodeOptions, Las, ModelConfig, ModelFile, PriorSums, WeightFormat};
use ndarray::Array2;
use rand::SeedableRng;

mod common;
use common::with_metadata;

fn model(seed: u64, listener_hidden: usize) -> ModelFile {
    let config = ModelConfig {
        input_dim: 80,
        listener_hidden,
        pyramid_layers: 2,
        embedding_dim: 5,
        speller_hidden: 6,
        attention_dim: 3,
        ctc_weight: 0.5,
        ..ModelConfig::default()
    };
    ModelFile::new(
        Las::new(config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)).unwrap(),
        FrontEndConfig::default(),
        Vocab::librispeech(),
    )
}

fn feats(seed: u64, frames: usize) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    lasr_nn::init::uniform((frames, 80), 1.0, &mut rng)
}

/// A two-model ensemble and its prior measured on two random utterances.
fn ensemble_with_prior() -> (ModelFile, Vec<Array2<f32>>) {
    let ens = ModelFile::ensemble(model(1, 4), vec![model(2, 6)], &[0.7, 0.3]).unwrap();
    let utterances = vec![feats(3, 64), feats(4, 40)];
    let w = ens.inference_weights(WeightFormat::F32);
    let mut sums = PriorSums::default();
    for x in &utterances {
        sums.add(ens.ctc_log_probs(&w, x.view()).unwrap().view())
            .unwrap();
    }
    let mut ens = ens;
    ens.ctc_prior = Some(sums.prior().unwrap());
    (ens, utterances)
}

#[test]
fn the_prior_is_the_mixtures_mean_posterior_and_travels_in_the_file() {
    let (ens, utterances) = ensemble_with_prior();
    let w = ens.inference_weights(WeightFormat::F32);
    let v = ens.vocab.len();
    let (mut by_hand, mut frames) = (vec![0f64; v], 0usize);
    for x in &utterances {
        let lp = ens.ctc_log_probs(&w, x.view()).unwrap();
        frames += lp.nrows();
        for row in lp.rows() {
            for (s, p) in by_hand.iter_mut().zip(row) {
                *s += f64::from(p.exp());
            }
        }
    }
    let prior = ens.ctc_prior.clone().unwrap();
    assert_eq!(prior.frames, frames as u64);
    // 64 and 40 frames, 4x fewer after the listener.
    assert_eq!(frames, 16 + 10);
    for (got, want) in prior.probs.iter().zip(&by_hand) {
        assert!(
            (f64::from(*got) - want / frames as f64).abs() < 1e-6,
            "{got} vs {}",
            want / frames as f64
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.safetensors");
    ens.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let meta = lasr_nn::checkpoint::metadata(&bytes).unwrap();
    let stored: CtcPrior = serde_json::from_str(&meta["lasr.ctc_prior"]).unwrap();
    assert_eq!(stored, prior);
    let back = ModelFile::load(&path).unwrap();
    assert_eq!(back.ctc_prior, Some(prior.clone()));
    // Without one, the key is not written (older builds read such files).
    model(1, 4).save(&path).unwrap();
    let meta = lasr_nn::checkpoint::metadata(&std::fs::read(&path).unwrap()).unwrap();
    assert!(!meta.contains_key("lasr.ctc_prior"));

    // A file whose prior is broken is refused on loading, naming the key and the
    // problem (NaN cannot be written in JSON: it comes as null).
    for (value, why) in [
        ("not json", "lasr.ctc_prior"),
        (
            r#"{"probs": [0.5, 0.5], "frames": 3}"#,
            "2 probabilities for 32 symbols",
        ),
        (r#"{"probs": null, "frames": 3}"#, "lasr.ctc_prior"),
        (
            r#"{"probs": [0.5, 0.5], "frames": 3, "more": 1}"#,
            "unknown field",
        ),
    ] {
        let e = ModelFile::from_bytes(&with_metadata(&bytes, "lasr.ctc_prior", value))
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{value}: {e}");
    }
    let mut off = prior.clone();
    off.probs[0] += 0.5;
    let e = ModelFile::from_bytes(&with_metadata(
        &bytes,
        "lasr.ctc_prior",
        &serde_json::to_string(&off).unwrap(),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("sum to"), "{e}");
    // The surgery itself keeps a good prior readable.
    let same = with_metadata(
        &bytes,
        "lasr.ctc_prior",
        &serde_json::to_string(&prior).unwrap(),
    );
    assert_eq!(
        ModelFile::from_bytes(&same).unwrap().ctc_prior,
        Some(prior.clone())
    );

    // A prior over another vocabulary is refused, naming what is wrong.
    let mut wrong = ens.clone();
    wrong.ctc_prior = Some(CtcPrior {
        probs: vec![0.5, 0.5],
        frames: 3,
    });
    let e = wrong.save(&path).unwrap_err().to_string();
    assert!(
        e.contains("CTC prior: 2 probabilities for 32 symbols"),
        "{e}"
    );
}

#[test]
fn decoding_searches_the_output_with_the_letters_prior_divided_out() {
    let (ens, utterances) = ensemble_with_prior();
    let x = &utterances[0];
    let w = ens.inference_weights(WeightFormat::F32);
    let beam = 8;
    let decode = |scale: f32, file: &ModelFile| {
        file.transcribe_features(
            &w,
            x.view(),
            &DecodeOptions {
                ctc_only: true,
                search: lasr_decode::SearchOptions {
                    beam_size: beam,
                    ..Default::default()
                },
                ctc_prior_scale: scale,
                ..Default::default()
            },
        )
    };
    let scale = 0.6;
    let got = decode(scale, &ens).unwrap();
    // The same search run by hand on the corrected output.
    let mut lp = ens.ctc_log_probs(&w, x.view()).unwrap();
    let shift = ens
        .ctc_prior
        .as_ref()
        .unwrap()
        .letter_shift(&ens.vocab, ens.las.config.blank);
    assert!(shift.iter().any(|s| s.abs() > 0.1), "{shift:?}");
    lasr_model::prior::correct(&mut lp, &shift, scale);
    let (frames, v) = lp.dim();
    let want = lasr_decode::ctc_beam_search_with(
        lp.as_slice().unwrap(),
        frames,
        v,
        ens.las.config.blank,
        None,
        None,
        &lasr_decode::CtcSearchOptions {
            beam_size: beam,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(got.nbest.len() > 1);
    assert_eq!(got.nbest.len(), want.len());
    for (a, h) in got.nbest.iter().zip(&want) {
        assert_eq!(a.text, ens.vocab.decode(&h.tokens));
        assert_eq!(a.ctc_log_prob, Some(h.ctc_log_prob));
    }
    // Off, the scores are the plain output's: the check above would see a missing
    // correction.
    let plain = decode(0.0, &ens).unwrap();
    assert!(plain
        .nbest
        .iter()
        .zip(&got.nbest)
        .any(|(a, b)| a.text != b.text || a.ctc_log_prob != b.ctc_log_prob));

    // A prior equal over the letters corrects nothing: the same list, the same scores.
    let mut flat = ens.clone();
    let mut probs = vec![0.0f32; v];
    probs[0] = 0.38;
    probs[4] = 0.08;
    for p in &mut probs[5..] {
        *p = 0.02;
    }
    flat.ctc_prior = Some(CtcPrior { probs, frames: 1 });
    flat.validate().unwrap();
    let flat_got = decode(scale, &flat).unwrap();
    for (a, b) in flat_got.nbest.iter().zip(&plain.nbest) {
        assert_eq!(a.text, b.text);
        let (a, b) = (a.ctc_log_prob.unwrap(), b.ctc_log_prob.unwrap());
        assert!((a - b).abs() < 1e-4 * b.abs(), "{a} vs {b}");
    }

    // Asked for without a prior: refused, saying how to get one.
    let mut none = ens.clone();
    none.ctc_prior = None;
    let e = decode(scale, &none).unwrap_err().to_string();
    assert!(e.contains("no CTC prior"), "{e}");
    let options = DecodeOptions {
        ctc_only: true,
        ctc_prior_scale: scale,
        ..Default::default()
    };
    let e = options.validate(&none).unwrap_err().to_string();
    assert!(e.contains("lasr prior"), "{e}");
    let e = DecodeOptions {
        ctc_prior_scale: 2.5,
        ..options
    }
    .validate(&ens)
    .unwrap_err()
    .to_string();
    assert!(e.contains("ctc_prior_scale 2.5"), "{e}");
}

#[test]
fn changing_the_mixture_drops_the_prior_and_its_scale() {
    let (mut ens, _) = ensemble_with_prior();
    ens.decode = Some(DecodeOptions {
        ctc_only: true,
        ctc_prior_scale: 0.6,
        ..Default::default()
    });
    ens.validate().unwrap();
    let dropped = |m: &ModelFile, what: &str| {
        assert!(m.ctc_prior.is_none(), "{what}");
        assert_eq!(m.decode.as_ref().unwrap().ctc_prior_scale, 0.0, "{what}");
        m.validate().unwrap();
    };
    dropped(
        &ModelFile::ensemble(ens.clone(), vec![], &[0.5, 0.5]).unwrap(),
        "re-weighted",
    );
    dropped(
        &ModelFile::ensemble(ens.clone(), vec![model(5, 4)], &[0.4, 0.3, 0.3]).unwrap(),
        "grown",
    );
    let mut fewer = ens.clone();
    fewer.drop_members(&[1]).unwrap();
    dropped(&fewer, "a member dropped");
    dropped(
        &ens.clone().with_main(model(1, 4)).unwrap(),
        "a new main model",
    );
    dropped(
        &ModelFile::average(&[model(1, 4), model(1, 4)].map(|mut m| {
            m.ctc_prior = ens.ctc_prior.clone();
            m.decode = ens.decode.clone();
            m
        }))
        .unwrap(),
        "averaged",
    );
    let mut member = ModelFile::ensemble(
        ens.clone(),
        vec![ModelFile::new(
            Las::new(
                ModelConfig {
                    ctc_weight: 1.0,
                    ..model(6, 4).las.config
                },
                &mut rand_chacha::ChaCha8Rng::seed_from_u64(6),
            )
            .unwrap(),
            FrontEndConfig::default(),
            Vocab::librispeech(),
        )],
        &[0.4, 0.3, 0.3],
    )
    .unwrap();
    // (Joining dropped the prior; one measured on the three-model mixture.)
    member.ctc_prior = ens.ctc_prior.clone();
    let taken = member.take_member(2).unwrap();
    assert!(taken.ctc_prior.is_none() && taken.decode.is_none());
    // Leaving out no member, or "re-weighting" to the same shares, changes nothing.
    let mut kept = ens.clone();
    kept.drop_members(&[]).unwrap();
    assert_eq!(kept.ctc_prior, ens.ctc_prior);
    assert_eq!(kept.decode, ens.decode);
    let same = ModelFile::ensemble(ens.clone(), vec![], &[0.7, 0.3]).unwrap();
    assert_eq!(same.ctc_prior, ens.ctc_prior);
    assert_eq!(same.decode, ens.decode);
}
