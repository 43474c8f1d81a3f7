//! CTC ensembles: the mixture, the file format and the decoding wiring.

use lasr_decode::Vocab;
use lasr_features::FrontEndConfig;
use lasr_model::{mix_log_probs, DecodeOptions, Las, ModelConfig, ModelFile, WeightFormat};
use lasr_nn::Module;
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};

fn config(pyramid_layers: usize, listener_hidden: usize) -> ModelConfig {
    ModelConfig {
        input_dim: 80,
        listener_hidden,
        pyramid_layers,
        embedding_dim: 5,
        speller_hidden: 6,
        attention_dim: 3,
        ctc_weight: 0.5,
        ..ModelConfig::default()
    }
}

fn model(seed: u64, config: ModelConfig) -> ModelFile {
    ModelFile {
        info: serde_json::json!({"seed": seed}),
        ..ModelFile::new(
            Las::new(config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)).unwrap(),
            FrontEndConfig::default(),
            Vocab::librispeech(),
        )
    }
}

fn log_softmax(x: Array2<f32>) -> Array2<f32> {
    let mut x = x.as_standard_layout().into_owned();
    lasr_nn::activation::log_softmax_rows(x.view_mut());
    x
}

/// A model's own CTC log-probabilities `[U, V]` of `feats`.
fn ctc_log_probs(m: &ModelFile, feats: ArrayView2<f32>) -> Array2<f32> {
    let w = m.las.inference_weights(WeightFormat::F32);
    let d = m.las.encode(&w, feats).unwrap();
    log_softmax(d.ctc_logits().unwrap().unwrap())
}

fn random_log_dist(rng: &mut impl Rng, rows: usize, cols: usize, scale: f32) -> Array2<f32> {
    log_softmax(lasr_nn::init::uniform((rows, cols), scale, rng))
}

/// CMVN statistics for 80 features: means within 3 of 0, deviations from 0.5 to 4.
fn random_cmvn(rng: &mut impl Rng) -> lasr_features::Cmvn {
    lasr_features::Cmvn {
        frames: 1000,
        mean: lasr_nn::init::uniform(80, 3.0, rng).to_vec(),
        std: lasr_nn::init::uniform(80, 1.75, rng)
            .iter()
            .map(|v| v + 2.25)
            .collect(),
    }
}

/// `raw` `[T, 80]` normalised with `cmvn` (as it is without).
fn normalised(raw: &Array2<f32>, cmvn: Option<&lasr_features::Cmvn>) -> Array2<f32> {
    let mut x = raw.clone();
    if let Some(c) = cmvn {
        c.apply(x.view_mut()).unwrap();
    }
    x
}

#[test]
fn the_mixture_is_the_weighted_mean_of_the_probabilities() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let a = random_log_dist(&mut rng, 9, 6, 8.0);
    let b = random_log_dist(&mut rng, 9, 6, 8.0);
    let c = random_log_dist(&mut rng, 9, 6, 8.0);
    let w = [0.5f32, 0.3, 0.2];
    let mixed = mix_log_probs(&[a.view(), b.view(), c.view()], &w).unwrap();
    for t in 0..9 {
        let mut total = 0.0f64;
        for k in 0..6 {
            let want = (f64::from(w[0]) * f64::from(a[[t, k]]).exp()
                + f64::from(w[1]) * f64::from(b[[t, k]]).exp()
                + f64::from(w[2]) * f64::from(c[[t, k]]).exp())
            .ln();
            assert!((f64::from(mixed[[t, k]]) - want).abs() < 1e-5);
            total += f64::from(mixed[[t, k]]).exp();
        }
        assert!((total - 1.0).abs() < 1e-5, "row {t} sums to {total}");
    }
    // Where every model puts almost nothing, the mixture still holds a finite value
    // (exponentiating first would underflow to log 0).
    let mut sure = Array2::from_elem((1, 3), -300.0f32);
    sure[[0, 0]] = 0.0;
    let mut other = Array2::from_elem((1, 3), -200.0f32);
    other[[0, 1]] = 0.0;
    let m = mix_log_probs(&[sure.view(), other.view()], &[0.5, 0.5]).unwrap();
    assert!((m[[0, 2]] - (-200.0 + 0.5f32.ln())).abs() < 1e-3, "{m}");
    assert!((m[[0, 0]] - 0.5f32.ln()).abs() < 1e-6);
    // Mismatched inputs are errors, not panics.
    let short = random_log_dist(&mut rng, 8, 6, 1.0);
    assert!(mix_log_probs(&[a.view(), short.view()], &[0.5, 0.5]).is_err());
    assert!(mix_log_probs(&[a.view(), b.view()], &[1.0]).is_err());
    assert!(mix_log_probs(&[], &[]).is_err());
    assert!(mix_log_probs(&[a.view(), b.view()], &[1.5, -0.5]).is_err());
}

#[test]
fn an_ensemble_decodes_the_mixture_of_its_models() {
    let a = model(1, config(2, 4));
    // Another run, another listener width: only the frames must line up.
    let b = model(2, config(2, 6));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let feats: Array2<f32> = lasr_nn::init::uniform((64, 80), 1.0, &mut rng);
    let (la, lb) = (
        ctc_log_probs(&a, feats.view()),
        ctc_log_probs(&b, feats.view()),
    );
    let ens = ModelFile::ensemble(a, vec![b], &[0.6, 0.4]).unwrap();
    assert!((ens.main_weight() - 0.6).abs() < 1e-6);
    let options = DecodeOptions {
        ctc_only: true,
        search: lasr_decode::SearchOptions {
            beam_size: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let decode =
        |w: &lasr_model::InferenceWeights| ens.transcribe_features(w, feats.view(), &options);
    let ew = ens.inference_weights(WeightFormat::F32);
    let t = decode(&ew).unwrap();
    let blank = ens.las.config.blank;
    // The public mixture is the one decoding reads.
    let public = ens.ctc_log_probs(&ew, feats.view()).unwrap();
    let by_hand = mix_log_probs(&[la.view(), lb.view()], &[0.6, 0.4]).unwrap();
    assert!(public
        .iter()
        .zip(&by_hand)
        .all(|(a, b)| (a - b).abs() < 1e-5));
    let score = |w: [f32; 2]| {
        let mixed = mix_log_probs(&[la.view(), lb.view()], &w).unwrap();
        let (tokens, _) = lasr_nn::ctc_greedy(mixed.view(), blank);
        (
            tokens.clone(),
            -lasr_nn::ctc_score(mixed.view(), &tokens, blank),
        )
    };
    let (tokens, want) = score([0.6, 0.4]);
    assert_eq!(t.tokens, tokens);
    let got = t.nbest[0].ctc_log_prob.unwrap();
    assert!(
        (got - want).abs() < 1e-4 * want.abs().max(1.0),
        "{got} vs {want}"
    );
    // The check would see swapped weights or the main model alone.
    let (swapped_tokens, swapped) = score([0.4, 0.6]);
    assert!(swapped_tokens != tokens || (swapped - want).abs() > 1e-3);
    let (_, alone) = score([1.0 - 1e-7, 1e-7]);
    assert!((alone - want).abs() > 1e-3);
    // The int8 path mixes too (packed member weights), close to f32.
    let t8 = decode(&ens.inference_weights(WeightFormat::Int8)).unwrap();
    let s8 = t8.nbest[0].ctc_log_prob.unwrap();
    assert!(
        (s8 - got).abs() < 0.05 * got.abs().max(1.0),
        "{s8} vs {got}"
    );
    // Weights made by the main model alone lack the members: an error, not a silent
    // single-model decode.
    let e = decode(&ens.las.inference_weights(WeightFormat::F32))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ensemble members"), "{e}");
}

#[test]
fn ensembles_round_trip_as_format_2_without_the_members_spellers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ens.safetensors");
    let ens = ModelFile::ensemble(
        model(1, config(2, 4)),
        vec![model(2, config(2, 6)), model(3, config(2, 5))],
        &[0.5, 0.3, 0.2],
    )
    .unwrap();
    ens.save(&path).unwrap();
    let back = ModelFile::load(&path).unwrap();
    assert_eq!(back.las, ens.las);
    assert_eq!(back.members, ens.members);
    assert_eq!(back.members[1].info, serde_json::json!({"seed": 3}));
    assert_eq!(back.members[0].weight, 0.3);
    let bytes = std::fs::read(&path).unwrap();
    let meta = lasr_nn::checkpoint::metadata(&bytes).unwrap();
    assert_eq!(meta["lasr.format"], "2");
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let names: Vec<String> = header.tensors().keys().cloned().collect();
    assert!(names.contains(&"member.2.listener.l0.weight_ih_l0".to_string()));
    assert!(names.contains(&"member.1.ctc.weight".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("member.1.speller")));
    let mut per_member = 0;
    ens.members[0].visit("", &mut |_, _| per_member += 1);
    assert_eq!(
        names.iter().filter(|n| n.starts_with("member.1.")).count(),
        per_member
    );
    // In half precision: format 3, members' tensors in F16 too.
    let mut half = ens.clone();
    half.storage = lasr_nn::Storage::F16;
    let bytes = half.to_bytes().unwrap();
    assert_eq!(
        lasr_nn::checkpoint::metadata(&bytes).unwrap()["lasr.format"],
        "3"
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("member.2.ctc.weight").unwrap().dtype(),
        safetensors::Dtype::F16
    );
    let back = ModelFile::from_bytes(&bytes).unwrap();
    assert_eq!(back.members.len(), 2);
    assert_eq!(back.storage, lasr_nn::Storage::F16);
    // A single model stays format 1, readable by builds from before ensembles.
    let single = dir.path().join("one.safetensors");
    model(1, config(2, 4)).save(&single).unwrap();
    let meta = lasr_nn::checkpoint::metadata(&std::fs::read(&single).unwrap()).unwrap();
    assert_eq!(meta["lasr.format"], "1");
    assert!(!meta.contains_key("lasr.members"));
}

#[test]
fn a_member_with_its_own_cmvn_reads_the_main_models_features_as_its_own() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let raw = lasr_nn::init::uniform((48, 80), 6.0, &mut rng);
    // The last member joins 4 frames before its first layer (the same 4x as the main
    // model's pyramid, by another road): its CMVN repeats across that layer's input.
    for (cell, main_cmvn, member_cmvn, stack) in [
        (
            lasr_model::CellType::Lstm,
            Some(random_cmvn(&mut rng)),
            Some(random_cmvn(&mut rng)),
            1,
        ),
        (
            lasr_model::CellType::Gru,
            None,
            Some(random_cmvn(&mut rng)),
            1,
        ),
        (
            lasr_model::CellType::Rnn,
            Some(random_cmvn(&mut rng)),
            None,
            1,
        ),
        (
            lasr_model::CellType::Gru,
            Some(random_cmvn(&mut rng)),
            Some(random_cmvn(&mut rng)),
            4,
        ),
    ] {
        let mut main = model(1, config(2, 4));
        main.front_end.cmvn = main_cmvn;
        let shape = if stack == 1 {
            config(2, 6)
        } else {
            ModelConfig {
                frame_stack: stack,
                top_layers: 1,
                ..config(0, 6)
            }
        };
        let mut member = model(2, ModelConfig { cell, ..shape });
        member.front_end.cmvn = member_cmvn;
        let (xa, xb) = (
            normalised(&raw, main.front_end.cmvn.as_ref()),
            normalised(&raw, member.front_end.cmvn.as_ref()),
        );
        let la = ctc_log_probs(&main, xa.view());
        let lb = ctc_log_probs(&member, xb.view());
        // Read with the main model's normalisation, the member is lost without the fold.
        let unfolded = ctc_log_probs(&member, xa.view());
        assert!(unfolded.iter().zip(&lb).any(|(u, b)| (u - b).abs() > 1e-2));
        let ens = ModelFile::ensemble(main, vec![member], &[0.6, 0.4]).unwrap();
        let got = ens
            .ctc_log_probs(&ens.inference_weights(WeightFormat::F32), xa.view())
            .unwrap();
        let want = mix_log_probs(&[la.view(), lb.view()], &[0.6, 0.4]).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{cell:?}: {worst}");
        if stack > 1 {
            // Written in 16 bits and then 8 (the shipped storage) and read back: the
            // stacked member keeps its shape, its top layer's matrices are stored as
            // 8-bit integers like every recurrent matrix, and the 8-bit file decodes in
            // int8 as the 16-bit one does.
            let mut half = ens.clone();
            half.storage = lasr_nn::Storage::F16;
            let half = ModelFile::from_bytes(&half.to_bytes().unwrap()).unwrap();
            let mut int8 = half.clone();
            int8.storage = lasr_nn::Storage::Int8;
            let bytes = int8.to_bytes().unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let top = st
                .tensor("member.1.listener.top.0.weight_hh_l0_reverse")
                .unwrap();
            assert_eq!(top.dtype(), safetensors::Dtype::I8);
            let back = ModelFile::from_bytes(&bytes).unwrap();
            assert_eq!(back.members[0].config.frame_stack, stack);
            assert_eq!(back.members[0].listener.top.len(), 1);
            let lp = |m: &ModelFile| {
                m.ctc_log_probs(&m.inference_weights(WeightFormat::Int8), xa.view())
                    .unwrap()
            };
            let (want, got) = (lp(&half), lp(&back));
            for (w, g) in want.iter().zip(&got) {
                assert!((w - g).abs() < 1e-5, "{w} vs {g}");
            }
        }
    }
    // A deviation of 0 cannot be divided by: refused, not folded into infinities.
    let mut main = model(1, config(2, 4));
    main.front_end.cmvn = Some(random_cmvn(&mut rng));
    let mut member = model(2, config(2, 6));
    let mut broken = random_cmvn(&mut rng);
    broken.std[7] = 0.0;
    member.front_end.cmvn = Some(broken);
    let e = ModelFile::ensemble(main, vec![member], &[0.5, 0.5])
        .unwrap_err()
        .to_string();
    assert!(e.contains("model 2") && e.contains("dimension 7"), "{e}");
}

#[test]
fn an_ensemble_grows_by_joining_it_with_another_model() {
    let (a, b, c) = (
        model(1, config(2, 4)),
        model(2, config(2, 6)),
        model(3, config(2, 5)),
    );
    let at_once =
        ModelFile::ensemble(a.clone(), vec![b.clone(), c.clone()], &[0.5, 0.3, 0.2]).unwrap();
    let pair = ModelFile::ensemble(a, vec![b], &[0.6, 0.4]).unwrap();
    let grown = ModelFile::ensemble(pair.clone(), vec![c.clone()], &[0.5, 0.3, 0.2]).unwrap();
    assert_eq!(
        grown.members, at_once.members,
        "members and their new weights"
    );
    assert_eq!(grown.las, at_once.las);
    assert_eq!(grown.main_weight(), at_once.main_weight());
    let e = ModelFile::ensemble(pair, vec![c], &[0.5, 0.5])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 models (the first holds 1 member) but 2 weights"),
        "{e}"
    );
}

#[test]
fn members_are_dropped_by_number_and_the_rest_reweighted() {
    let (a, b, c, d) = (
        model(1, config(2, 4)),
        model(2, config(2, 6)),
        model(3, config(2, 5)),
        model(4, config(2, 3)),
    );
    let full = ModelFile::ensemble(
        a.clone(),
        vec![b.clone(), c.clone(), d.clone()],
        &[0.4, 0.3, 0.2, 0.1],
    )
    .unwrap();
    let mut kept = full.clone();
    kept.drop_members(&[3, 1]).unwrap();
    // Member 2 (c) alone stays, with its weight; the main model takes the rest.
    assert_eq!(kept.members, vec![full.members[1].clone()]);
    assert!((kept.main_weight() - 0.8).abs() < 1e-6);
    let reweighted = ModelFile::ensemble(kept, Vec::new(), &[0.5, 0.5]).unwrap();
    let direct = ModelFile::ensemble(a.clone(), vec![c], &[0.5, 0.5]).unwrap();
    assert_eq!(reweighted.members, direct.members);
    // Every member dropped: the main model as it was.
    let mut alone = full.clone();
    alone.drop_members(&[1, 2, 3]).unwrap();
    assert!(alone.members.is_empty());
    assert_eq!(alone.las, a.las);
    // Refusals name the number and leave the model untouched.
    for (numbers, says) in [
        (
            &[0][..],
            "no member 0 to leave out: the model has members 1 to 3",
        ),
        (&[2, 4][..], "no member 4"),
        (&[2, 2][..], "member 2 is named twice"),
    ] {
        let mut m = full.clone();
        let e = m.drop_members(numbers).unwrap_err().to_string();
        assert!(e.contains(says), "{numbers:?}: {e}");
        assert_eq!(m.members, full.members, "{numbers:?}");
    }
    let e = a.clone().drop_members(&[1]).unwrap_err().to_string();
    assert!(e.contains("the model has no members"), "{e}");
}

#[test]
fn broken_or_mismatched_ensembles_are_refused_with_the_reason() {
    let err = |r: lasr_model::Result<ModelFile>| r.unwrap_err().to_string();
    let a = || model(1, config(2, 4));
    // Frames that would not line up.
    let e = err(ModelFile::ensemble(
        a(),
        vec![model(2, config(1, 4))],
        &[0.5, 0.5],
    ));
    assert!(e.contains("model 2") && e.contains("time reduction"), "{e}");
    // Another front end: members read the main model's features.
    let mut other = model(2, config(2, 4));
    other.front_end.features.dither = 0.5;
    let e = err(ModelFile::ensemble(a(), vec![other], &[0.5, 0.5]));
    assert!(
        e.contains("model 2") && e.contains("feature settings"),
        "{e}"
    );
    // SpecAugment's masks shaped training only: they do not keep models apart.
    let mut masked = model(2, config(2, 4));
    masked.front_end.features.spec_augment.max_time_width = 7;
    ModelFile::ensemble(a(), vec![masked.clone()], &[0.5, 0.5]).unwrap();
    ModelFile::average(&[a(), masked]).unwrap();
    // No CTC head to mix.
    let mut no_ctc = config(2, 4);
    no_ctc.ctc_weight = 0.0;
    let e = err(ModelFile::ensemble(
        a(),
        vec![model(2, no_ctc)],
        &[0.5, 0.5],
    ));
    assert!(e.contains("CTC head"), "{e}");
    // Weights.
    let e = err(ModelFile::ensemble(a(), vec![a()], &[0.5, 0.4]));
    assert!(e.contains("sum to"), "{e}");
    let e = err(ModelFile::ensemble(a(), vec![a()], &[1.0]));
    assert!(e.contains("2 models but 1 weights"), "{e}");
    let e = err(ModelFile::ensemble(a(), vec![a()], &[1.5, -0.5]));
    assert!(e.contains("not positive"), "{e}");
    // An ensemble is not averaged, nor nested.
    let ens = ModelFile::ensemble(a(), vec![a()], &[0.5, 0.5]).unwrap();
    let e = err(ModelFile::average(&[a(), ens.clone()]));
    assert!(e.contains("model 2 is an ensemble"), "{e}");
    let e = err(ModelFile::ensemble(a(), vec![ens.clone()], &[0.5, 0.5]));
    assert!(e.contains("ensemble already"), "{e}");

    // Files: a missing member tensor, members in a format 1 file, a future format.
    let dir = tempfile::tempdir().unwrap();
    let bytes = ens.to_bytes().unwrap();
    let meta = lasr_nn::checkpoint::metadata(&bytes).unwrap();
    let only_main = lasr_nn::checkpoint::to_bytes(&ens.las, "", &meta).unwrap();
    let e = ModelFile::from_bytes(&only_main).unwrap_err().to_string();
    // Every missing tensor is named, the member's CTC head among them.
    assert!(
        e.contains("member.1.listener.l0.weight_ih_l0 is missing")
            && e.contains("member.1.ctc.weight is missing"),
        "{e}"
    );
    let mut old = meta.clone();
    old.insert("lasr.format".into(), "1".into());
    let parts: Vec<(&str, &dyn Module)> = vec![("", &ens.las), ("member.1", &ens.members[0])];
    let path = dir.path().join("old.safetensors");
    std::fs::write(
        &path,
        lasr_nn::checkpoint::to_bytes_parts(&parts, &old).unwrap(),
    )
    .unwrap();
    let e = ModelFile::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("old.safetensors") && e.contains("format 1"),
        "{e}"
    );
    let mut future = meta.clone();
    let next = lasr_model::FORMAT_VERSION + 1;
    future.insert("lasr.format".into(), next.to_string());
    let e = ModelFile::from_bytes(&lasr_nn::checkpoint::to_bytes_parts(&parts, &future).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("format {next}")) && e.contains(&format!("formats 1 to {}", next - 1)),
        "{e}"
    );
    // A member whose weight leaves nothing for the main model.
    let mut heavy = ens.clone();
    heavy.members[0].weight = 1.0;
    let e = heavy.validate().unwrap_err().to_string();
    assert!(e.contains("member 1") && e.contains("weight 1"), "{e}");
}

#[test]
fn an_ensemble_is_not_trained() {
    let a = || model(1, config(2, 4));
    let ens = ModelFile::ensemble(a(), vec![a()], &[0.5, 0.5]).unwrap();
    let data = lasr_data::Dataset {
        utterances: vec![lasr_data::Utterance {
            id: "u0".into(),
            transcript: "hi".into(),
            feats: Array2::zeros((40, 80)),
        }],
    };
    let dir = tempfile::tempdir().unwrap();
    let e = lasr_model::train(
        ens,
        &data,
        &data,
        &lasr_model::TrainOptions::default(),
        dir.path(),
        false,
        &mut lasr_model::Quiet,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("ensemble of 2 models cannot be trained"), "{e}");
}

#[test]
fn a_member_taken_out_is_the_model_that_joined() {
    let ctc_only = |hidden| ModelConfig {
        ctc_weight: 1.0,
        ..config(2, hidden)
    };
    let b = model(2, ctc_only(5));
    let c = model(3, ctc_only(6));
    let ens =
        ModelFile::ensemble(model(1, config(2, 4)), vec![b.clone(), c], &[0.5, 0.3, 0.2]).unwrap();
    let params = |las: &Las, prefix: &str| {
        let mut out = Vec::new();
        las.visit("", &mut |name, t| {
            if name.starts_with(prefix) {
                out.push((name, t.to_owned()));
            }
        });
        out
    };
    let taken = ens.clone().take_member(1).unwrap();
    assert!(taken.members.is_empty());
    assert_eq!(taken.las.config, b.las.config);
    assert_eq!(taken.info, b.info);
    assert_eq!(taken.front_end, ens.front_end);
    for part in ["listener.", "ctc."] {
        let got = params(&taken.las, part);
        assert!(!got.is_empty(), "{part}");
        assert_eq!(got, params(&b.las, part), "{part}");
    }
    // Taken out and joined again, the members are what they were.
    let mut main = ens.clone();
    main.members.clear();
    let back = ModelFile::ensemble(
        main,
        vec![taken, ens.clone().take_member(2).unwrap()],
        &[0.5, 0.3, 0.2],
    )
    .unwrap();
    assert_eq!(back.members, ens.members);

    let e = ens.clone().take_member(3).unwrap_err().to_string();
    assert!(
        e.contains("no member 3") && e.contains("members 1 to 2"),
        "{e}"
    );
    assert!(ens.clone().take_member(0).is_err());
    // A joint member's speller was not kept: it cannot come back whole.
    let joint = ModelFile::ensemble(
        model(1, config(2, 4)),
        vec![model(4, config(2, 5))],
        &[0.5, 0.5],
    )
    .unwrap();
    let e = joint.take_member(1).unwrap_err().to_string();
    assert!(e.contains("attention decoder"), "{e}");
}

#[test]
fn a_member_taken_out_after_its_cmvn_was_folded_in_reads_as_it_did_alone() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let raw = lasr_nn::init::uniform((40, 80), 6.0, &mut rng);
    let mut main = model(1, config(2, 4));
    main.front_end.cmvn = Some(random_cmvn(&mut rng));
    let mut member = model(
        2,
        ModelConfig {
            ctc_weight: 1.0,
            ..config(2, 5)
        },
    );
    member.front_end.cmvn = Some(random_cmvn(&mut rng));
    let alone = ctc_log_probs(
        &member,
        normalised(&raw, member.front_end.cmvn.as_ref()).view(),
    );
    // Without the fold, the member reading the ensemble's features would be lost.
    let unfolded = ctc_log_probs(
        &member,
        normalised(&raw, main.front_end.cmvn.as_ref()).view(),
    );
    assert!(unfolded
        .iter()
        .zip(&alone)
        .any(|(u, a)| (u - a).abs() > 1e-2));
    let ens = ModelFile::ensemble(main, vec![member], &[0.6, 0.4]).unwrap();
    let taken = ens.clone().take_member(1).unwrap();
    // The taken model reads the ensemble's statistics, its first layer carrying the
    // difference: fed the ensemble's features it gives what the member gave alone.
    assert_eq!(taken.front_end, ens.front_end);
    let x = normalised(&raw, ens.front_end.cmvn.as_ref());
    let got = ctc_log_probs(&taken, x.view());
    let worst = got
        .iter()
        .zip(&alone)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn a_new_main_model_that_cannot_lead_the_members_is_refused() {
    let mut ens = ModelFile::ensemble(
        model(1, config(2, 4)),
        vec![model(2, config(2, 5))],
        &[0.6, 0.4],
    )
    .unwrap();
    ens.decode = Some(DecodeOptions {
        ctc_only: true,
        ..DecodeOptions::default()
    });
    ens.storage = lasr_nn::Storage::F16;
    // A later phase of the main model takes its place; the members and weights, the
    // recommended decoding and the storage stay.
    let later = model(3, config(2, 4));
    let swapped = ens.clone().with_main(later.clone()).unwrap();
    assert_eq!(swapped.members, ens.members);
    assert_eq!(swapped.decode, ens.decode);
    assert_eq!(swapped.storage, ens.storage);
    assert_eq!(swapped.las, later.las);
    assert_eq!(swapped.info, later.info);
    // An ensemble in the main model's place would bring members of its own.
    let e = ens.clone().with_main(ens.clone()).unwrap_err().to_string();
    assert!(e.contains("an ensemble itself"), "{e}");
    // Without a CTC head there is nothing to mix the members' distributions with.
    let no_ctc = model(
        4,
        ModelConfig {
            ctc_weight: 0.0,
            ..config(2, 4)
        },
    );
    // (Without the recommended CTC decoding, which is refused first for want of a head.)
    let undecided = ModelFile {
        decode: None,
        ..ens.clone()
    };
    let e = undecided.with_main(no_ctc.clone()).unwrap_err().to_string();
    assert!(e.contains("needs a CTC head"), "{e}");
    let e = ens.clone().with_main(no_ctc).unwrap_err().to_string();
    assert!(e.contains("no CTC head"), "{e}");
    // Another time reduction would give the mixture rows that do not line up.
    let e = ens
        .clone()
        .with_main(model(5, config(3, 4)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("member 1") && e.contains("time reduction"),
        "{e}"
    );
    // Other CMVN statistics: the members were folded to the ensemble's.
    let mut shifted = model(6, config(2, 4));
    shifted.front_end.cmvn = Some(lasr_features::Cmvn {
        frames: 10,
        mean: vec![1.0; 80],
        std: vec![2.0; 80],
    });
    let e = ens.clone().with_main(shifted).unwrap_err().to_string();
    assert!(e.contains("CMVN statistics"), "{e}");
    // The utterance shape alone: the message says which setting, and how to set it.
    let mut shaped = model(7, config(2, 4));
    shaped.front_end.utterance_shape = true;
    let e = ens.with_main(shaped).unwrap_err().to_string();
    assert!(e.contains("utterance shape or spread setting"), "{e}");
}

#[test]
fn members_read_with_the_first_models_utterance_shape() {
    let mut first = model(1, config(2, 4));
    first.front_end.utterance_shape = true;
    let plain = model(2, config(2, 5));
    let ens = ModelFile::ensemble(first.clone(), vec![plain.clone()], &[0.6, 0.4]).unwrap();
    assert!(ens.front_end.utterance_shape);
    // And the other way round: a member with it joins a first model without it.
    let mut shaped = plain;
    shaped.front_end.utterance_shape = true;
    first.front_end.utterance_shape = false;
    let ens = ModelFile::ensemble(first, vec![shaped], &[0.6, 0.4]).unwrap();
    assert!(!ens.front_end.utterance_shape);
}
