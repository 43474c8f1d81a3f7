//! The ensemble speller: its start as the main speller, gradients, training, its place
//! in the model file and in decoding.

use lasr_decode::Vocab;
use lasr_features::FrontEndConfig;
use lasr_model::ensemble_speller::ensemble_speller_nll;
use lasr_model::{
    train_ensemble_speller, DecodeOptions, Encoded, EnsembleSpeller, EnsembleSpellerOptions, Las,
    ModelConfig, ModelFile, WeightFormat,
};
use lasr_nn::gradcheck::check_params;
use lasr_nn::Module;
use ndarray::{Array2, Array3, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

mod common;
use common::with_metadata;

fn config(listener_hidden: usize, ctc_weight: f32) -> ModelConfig {
    ModelConfig {
        input_dim: 80,
        listener_hidden,
        pyramid_layers: 1,
        embedding_dim: 5,
        speller_hidden: 6,
        attention_dim: 3,
        ctc_weight,
        ..ModelConfig::default()
    }
}

fn model(seed: u64, config: ModelConfig) -> ModelFile {
    ModelFile::new(
        Las::new(config, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap(),
        FrontEndConfig::default(),
        Vocab::librispeech(),
    )
}

/// A main model (listener 4 wide per direction) with two members (3 and 5 wide): 8 +
/// 6 + 10 = 24 listener states per frame.
fn ensemble() -> ModelFile {
    ModelFile::ensemble(
        model(1, config(4, 0.5)),
        vec![model(2, config(3, 1.0)), model(3, config(5, 1.0))],
        &[0.4, 0.3, 0.3],
    )
    .unwrap()
}

fn feats(seed: u64, frames: usize) -> Array2<f32> {
    lasr_nn::init::uniform((frames, 80), 1.5, &mut ChaCha8Rng::seed_from_u64(seed))
}

fn ids(text: &str) -> Vec<usize> {
    Vocab::librispeech().encode(text)
}

/// Sum of a teacher-forced sequence's log-probabilities under `las`'s own speller.
fn main_speller_log_prob(las: &Las, feats: &Array2<f32>, target: &[usize]) -> f64 {
    let batch = lasr_model::Batch {
        feats: feats.clone().insert_axis(Axis(1)),
        lengths: vec![feats.nrows()],
        targets: vec![target.to_vec()],
        seeds: None,
    };
    let logits = las.logits(&batch).unwrap();
    let mut total = 0.0;
    for (step, row) in logits.index_axis(Axis(1), 0).rows().into_iter().enumerate() {
        let mut r = row.to_owned().insert_axis(Axis(0));
        lasr_nn::activation::log_softmax_rows(r.view_mut());
        let t = target.get(step).copied().unwrap_or(Vocab::EOS);
        total += f64::from(r[[0, t]]);
    }
    total
}

#[test]
fn it_starts_as_the_main_speller_in_training_and_in_decoding() {
    let file = ensemble();
    assert_eq!(file.all_listeners_dim(), 8 + 6 + 10);
    let es = EnsembleSpeller::from_file(&file);
    assert_eq!(es.input_dim(), 24);
    let w = file.inference_weights(WeightFormat::F32);
    let x = feats(5, 23);
    let states = file.listen_all(&w, x.view()).unwrap();
    assert_eq!(states.dim(), (11, 24));
    // The members' columns are each member's own listener's states.
    let own = file.members[1]
        .listen(x.view(), &file.members[1].pack(WeightFormat::F32))
        .unwrap();
    assert_eq!(states.slice(ndarray::s![.., 14..]), own);
    let target = ids("abc de");
    let teacher = es
        .log_probs(&[states.view()], std::slice::from_ref(&target))
        .unwrap()[0];
    let main = main_speller_log_prob(&file.las, &x, &target);
    assert!((teacher - main).abs() < 1e-4, "{teacher} vs {main}");
    // The decoding path: the same score through the step-by-step decoder.
    let mut with = file.clone();
    with.ensemble_speller = Some(es.clone());
    let w = with.inference_weights(WeightFormat::F32);
    let decoder = es.encode(&w, states.view()).unwrap();
    let scored = lasr_decode::score_sequences(&decoder, std::slice::from_ref(&target)).unwrap()[0];
    assert!((scored - main).abs() < 1e-3, "{scored} vs {main}");
    // Weights made before the speller was in the file cannot run it.
    let without = file.inference_weights(WeightFormat::F32);
    assert!(es.encode(&without, states.view()).is_err());
    // Nor do states of another width pass.
    assert!(es.encode(&w, states.slice(ndarray::s![.., ..20])).is_err());
    // Once the projection reads a member, the scores move.
    let mut moved = es.clone();
    moved.proj.weight[[0, 20]] = 3.0;
    let other = moved
        .log_probs(&[states.view()], std::slice::from_ref(&target))
        .unwrap()[0];
    assert!((other - teacher).abs() > 1e-3, "{other} vs {teacher}");
}

#[test]
fn gradients_match_finite_differences_with_noise_and_padding() {
    let file = ensemble();
    let mut es = EnsembleSpeller::from_file(&file);
    // Away from the identity start, every projection weight matters.
    es.proj = lasr_nn::Linear::new(24, 8, true, &mut ChaCha8Rng::seed_from_u64(9));
    // No scheduled sampling: its argmax choices make the loss a step function of
    // the weights, which finite differences cannot follow (and it passes no gradient).
    es.config.dropout = 0.3;
    es.config.label_smoothing = 0.1;
    let mut x = lasr_nn::init::uniform((7, 3, 24), 1.0, &mut ChaCha8Rng::seed_from_u64(4));
    // Padding past each length must not count: garbage there changes nothing.
    let lengths = [7usize, 4, 2];
    x.slice_mut(ndarray::s![4.., 1, ..]).fill(50.0);
    let targets = vec![ids("ab c"), ids(""), ids("zz'")];
    let seeds = [3u64, 4, 5];
    let mut grads = es.zeros_like();
    let (nll, count) = es
        .train_step(
            x.clone(),
            &lengths,
            &targets,
            Some((&seeds, 0.25)),
            Some((&mut grads, 1.0)),
        )
        .unwrap();
    assert_eq!(count, 5 + 1 + 4);
    assert!(nll > 0.0);
    // The reported loss is the unsmoothed one, so the check runs without smoothing
    // (the smoothed gradient is checked in lasr-nn's loss).
    let mut plain = es.clone();
    plain.config.label_smoothing = 0.0;
    let loss = |m: &EnsembleSpeller| {
        m.train_step(x.clone(), &lengths, &targets, Some((&seeds, 0.25)), None)
            .unwrap()
            .0
    };
    let mut g = plain.zeros_like();
    let (plain_nll, _) = plain
        .train_step(
            x.clone(),
            &lengths,
            &targets,
            Some((&seeds, 0.25)),
            Some((&mut g, 1.0)),
        )
        .unwrap();
    // Smoothing changes the gradient, not the reported loss.
    assert_eq!(plain_nll, nll);
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    g.visit("", &mut |_, t| ga.extend(t.iter().copied()));
    grads.visit("", &mut |_, t| gb.extend(t.iter().copied()));
    assert!(ga.iter().zip(&gb).any(|(p, q)| (p - q).abs() > 1e-4));
    let reports = check_params(&plain, &g, &loss, 1e-2, 8, 1e-2);
    let mut tensors = 0;
    plain.visit("", &mut |_, _| tensors += 1);
    assert_eq!(reports.len(), tensors, "every tensor is checked");
    for r in &reports {
        eprintln!("{r:?}");
        assert!(r.error < 2e-2, "{r:?}");
    }
    // The padding's garbage reached no gradient: the same batch with zeros there
    // gives the same gradients.
    let mut clean = x.clone();
    clean.slice_mut(ndarray::s![4.., 1, ..]).fill(0.0);
    let mut g2 = plain.zeros_like();
    plain
        .train_step(
            clean,
            &lengths,
            &targets,
            Some((&seeds, 0.25)),
            Some((&mut g2, 1.0)),
        )
        .unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    g.visit("", &mut |_, t| a.extend(t.iter().copied()));
    g2.visit("", &mut |_, t| b.extend(t.iter().copied()));
    assert!(a
        .iter()
        .zip(&b)
        .all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + p.abs())));
    // Shapes that do not fit are refused, not read past.
    assert!(es
        .train_step(x.clone(), &[7, 4], &targets, None, None)
        .is_err());
    assert!(es
        .train_step(x.clone(), &[8, 4, 2], &targets, None, None)
        .is_err());
    assert!(es
        .train_step(Array3::zeros((7, 3, 23)), &lengths, &targets, None, None)
        .is_err());
}

#[test]
fn training_learns_from_the_members_and_a_nan_stops_it() {
    // The main listener hears nothing useful (its states are the same for every
    // utterance); a member's states carry which of two words was said. Only by
    // learning to read the member can the speller tell them apart.
    let file = ensemble();
    let d_all = file.all_listeners_dim();
    let words = [ids("yes"), ids("no")];
    let data: Vec<Encoded> = (0..24)
        .map(|i| {
            let which = i % 2;
            let mut s = Array2::<f32>::zeros((6, d_all));
            s.column_mut(10 + which).fill(1.0);
            s.column_mut(0).fill(0.5);
            Encoded::new(s.view(), words[which].clone())
        })
        .collect();
    let mut es = EnsembleSpeller::from_file(&file);
    let options = EnsembleSpellerOptions {
        epochs: 30,
        learning_rate: 2e-2,
        warmup_steps: 0,
        batch_frames: 24,
        dropout: 0.0,
        input_dropout: 0.0,
        ..Default::default()
    };
    let (before, n) = ensemble_speller_nll(&es, &data, &options).unwrap();
    let mut epochs = Vec::new();
    train_ensemble_speller(
        &mut es,
        &data,
        &data,
        &options,
        |_| {},
        |_, e| {
            epochs.push(e);
            Ok(())
        },
    )
    .unwrap();
    let after = epochs.last().unwrap().valid_loss;
    assert_eq!(epochs.len(), 30);
    assert!(
        after < 0.2 * before / n as f64,
        "{} -> {after}",
        before / n as f64
    );
    // The projection learned to read the member's columns.
    assert!(es.proj.weight.column(10).iter().any(|w| w.abs() > 0.05));
    // The projection alone: the speller stays bit for bit the main one.
    let mut proj_only = EnsembleSpeller::from_file(&file);
    let start = proj_only.clone();
    train_ensemble_speller(
        &mut proj_only,
        &data,
        &data,
        &EnsembleSpellerOptions {
            epochs: 2,
            projection_only: true,
            ..options.clone()
        },
        |_| {},
        |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(proj_only.speller, start.speller);
    assert_ne!(proj_only.proj, start.proj);
    // A NaN stops training before it spreads: the weights stay finite.
    let mut bad = data.clone();
    bad[3].states[5] = half::f16::NAN;
    let mut es2 = EnsembleSpeller::from_file(&file);
    let err =
        train_ensemble_speller(&mut es2, &bad, &data, &options, |_| {}, |_, _| Ok(())).unwrap_err();
    assert!(err.to_string().contains("loss became NaN"), "{err}");
    let mut finite = true;
    es2.visit("", &mut |_, t| finite &= t.iter().all(|v| v.is_finite()));
    assert!(finite);
}

#[test]
fn the_model_file_carries_it_and_decoding_uses_it() {
    let mut file = ensemble();
    let mut es = EnsembleSpeller::from_file(&file);
    es.proj = lasr_nn::Linear::new(24, 8, true, &mut ChaCha8Rng::seed_from_u64(12));
    file.ensemble_speller = Some(es.clone());
    assert_eq!(file.format_version(), 5);
    let bytes = file.to_bytes().unwrap();
    let back = ModelFile::from_bytes(&bytes).unwrap();
    assert_eq!(back.ensemble_speller.as_ref(), Some(&es));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = st.names();
    for name in [
        "ensemble_speller.proj.weight",
        "ensemble_speller.proj.bias",
        "ensemble_speller.speller.emb.weight",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    // Decoding: the CTC search's n-best re-ranked by it, its log-probs reported.
    let x = feats(8, 40);
    let w = back.inference_weights(WeightFormat::F32);
    let options = DecodeOptions {
        ctc_only: true,
        search: lasr_decode::SearchOptions {
            beam_size: 8,
            ..Default::default()
        },
        rescore_nbest: 4,
        ensemble_speller_weight: 0.7,
        ..Default::default()
    };
    let t = back.transcribe_features(&w, x.view(), &options).unwrap();
    let states = back.listen_all(&w, x.view()).unwrap();
    let decoder = es.encode(&w, states.view()).unwrap();
    // (Only the best's tokens are kept: a text may not spell its tokens back.)
    let own = lasr_decode::score_sequences(&decoder, std::slice::from_ref(&t.tokens)).unwrap()[0];
    let best = t.nbest[0].ensemble_speller_log_prob.unwrap();
    assert!((best - own).abs() < 1e-6, "{best} vs {own}");
    assert_eq!(t.nbest.len(), 4);
    for alt in &t.nbest {
        let lp = alt
            .ensemble_speller_log_prob
            .expect("every kept one is scored");
        let ctc = alt.ctc_log_prob.unwrap();
        assert!(
            (alt.score - (ctc + 0.7 * lp)).abs() < 1e-3 * alt.score.abs().max(1.0),
            "{alt:?}"
        );
    }
    assert!(t.nbest.windows(2).all(|p| p[0].score >= p[1].score));
    // Off, nothing is scored by it.
    let off = DecodeOptions {
        ensemble_speller_weight: 0.0,
        ..options.clone()
    };
    let t0 = back.transcribe_features(&w, x.view(), &off).unwrap();
    assert!(t0
        .nbest
        .iter()
        .all(|a| a.ensemble_speller_log_prob.is_none()));
    // Asked of a file without one, or with the attention search, it is refused.
    assert!(options.validate(&ensemble()).is_err());
    let attention = DecodeOptions {
        ctc_only: false,
        ..options.clone()
    };
    assert!(attention.validate(&back).is_err());
    // Changing the listeners drops it (it heard the old ones), and its weight with it.
    let mut dropped = back.clone();
    dropped.decode = Some(options.clone());
    dropped.drop_members(&[2]).unwrap();
    assert!(dropped.ensemble_speller.is_none());
    assert_eq!(
        dropped.decode.as_ref().unwrap().ensemble_speller_weight,
        0.0
    );
    dropped.validate().unwrap();
    // So do the other ways of changing a listener; re-weighting alone keeps it.
    let reweighted = ModelFile::ensemble(back.clone(), Vec::new(), &[0.2, 0.4, 0.4]).unwrap();
    assert!(reweighted.ensemble_speller.is_some());
    let grown =
        ModelFile::ensemble(back.clone(), vec![model(4, config(3, 1.0))], &[0.25; 4]).unwrap();
    assert!(grown.ensemble_speller.is_none());
    let new_main = back.clone().with_main(model(5, config(4, 0.5))).unwrap();
    assert!(new_main.ensemble_speller.is_none());
    let taken = back.clone().take_member(1).unwrap();
    assert!(taken.ensemble_speller.is_none());
    let mut single = model(1, config(4, 0.5));
    single.ensemble_speller = Some(EnsembleSpeller::from_file(&single));
    let averaged = ModelFile::average(&[single.clone(), single]).unwrap();
    assert!(averaged.ensemble_speller.is_none());
    // A hostile header cannot make the loader build a speller larger than the file
    // holds, nor one of other shapes than the main model's.
    let meta_of = |bytes: &[u8]| -> serde_json::Value {
        let (_, st) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
        serde_json::from_str(&st.metadata().as_ref().unwrap()["lasr.ensemble_speller"]).unwrap()
    };
    let mut meta = meta_of(&bytes);
    meta["model_config"]["embedding_dim"] = serde_json::json!(1_000_000_000usize);
    let err = ModelFile::from_bytes(&with_metadata(
        &bytes,
        "lasr.ensemble_speller",
        &meta.to_string(),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("values"), "{err}");
    let mut meta = meta_of(&bytes);
    meta["model_config"]["vocab_size"] = serde_json::json!(40);
    let err = ModelFile::from_bytes(&with_metadata(
        &bytes,
        "lasr.ensemble_speller",
        &meta.to_string(),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("40 symbols"), "{err}");
    // A file whose speller reads another width than its listeners make is refused.
    let mut wrong = file.clone();
    wrong.ensemble_speller = Some(EnsembleSpeller::from_file(&model(1, config(4, 0.5))));
    let err = wrong.to_bytes().unwrap_err();
    assert!(err.to_string().contains("reads 8 listener states"), "{err}");
}
