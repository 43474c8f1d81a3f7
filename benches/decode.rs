//! Decoding one 10 s utterance (1000 frames) with the reference-size model (13.6 M
//! parameters): the listener once, then 150 speller steps for 1 hypothesis (greedy)
//! or 8 (a beam of 8, with the beam's row selection after each step). Steps are
//! driven through the `Decoder` trait exactly as the searches drive it, but for a
//! fixed 150 steps: an untrained model's `<eos>` would otherwise end the search at a
//! random length. Also the CTC prefix beam search (beam 16) over the 125 CTC frames.
//! The real-time factor is the time over 10 s.
//!
//! `decode_shipped/ctc_search_shipped_sample`: the shipped model's own CTC search
//! (its beam, its character and word LMs, as `assets/decode.json` says) over the CTC
//! output for `assets/sample.wav` (8.2 s): the search alone, without the model; and
//! `decode_shipped/ctc_log_probs_shipped_sample`, the model alone (its listener and
//! CTC head, and an ensemble's members'), the same audio's features in.
//!
//! `rnnlm/score_8x150`: an LSTM language model the size `lasr rnnlm` trains by default
//! (1 x 512, embedding 64) scoring an 8-best list of 150-character hypotheses, the
//! re-ranking `--rnnlm` adds to each utterance's search: through the batched forward
//! pass, and through the prefix-sharing scorer `--rnnlm` uses.
//!
//!     RAYON_NUM_THREADS=1 cargo bench -p lasr-model --bench decode

use criterion::{criterion_group, Criterion};
use lasr_decode::Decoder;
use lasr_model::{Las, ModelConfig, WeightFormat};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const STEPS: usize = 150;

fn steps(dec: &lasr_model::UtteranceDecoder, hyps: usize) {
    let mut state = dec.initial().unwrap();
    if hyps > 1 {
        state = dec.select(state, &vec![0; hyps]).unwrap();
    }
    let mut prev = vec![dec.sos(); hyps];
    let v = dec.vocab_size();
    for t in 0..STEPS {
        let step = dec.step(&prev, state).unwrap();
        // Each hypothesis continues with its best non-special token; rows are
        // reshuffled as a beam would reshuffle them.
        for (i, p) in prev.iter_mut().enumerate() {
            let row = &step.log_probs[i * v..(i + 1) * v];
            *p = (3..v).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        }
        state = if hyps > 1 {
            let rows: Vec<usize> = (0..hyps).map(|i| (i + t) % hyps).collect();
            dec.select(step.state, &rows).unwrap()
        } else {
            step.state
        };
    }
}

fn decode(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let las = Las::new(
        ModelConfig {
            ctc_weight: 0.5,
            ..ModelConfig::default()
        },
        &mut rng,
    )
    .unwrap();
    let feats = lasr_nn::init::uniform((1000, 80), 1.0, &mut rng);
    let mut group = c.benchmark_group("decode_10s_reference");
    group.sample_size(10);
    for format in WeightFormat::ALL {
        // Laid out once per model, as `lasr transcribe` and `lasr bench` do.
        let w = las.inference_weights(format);
        group.bench_function(format!("listener_{format}"), |b| {
            b.iter(|| las.encode(&w, feats.view()).unwrap())
        });
        group.bench_function(format!("greedy_150_steps_{format}"), |b| {
            b.iter(|| steps(&las.encode(&w, feats.view()).unwrap(), 1))
        });
        group.bench_function(format!("beam8_150_steps_{format}"), |b| {
            b.iter(|| steps(&las.encode(&w, feats.view()).unwrap(), 8))
        });
    }
    let w = las.inference_weights(WeightFormat::F32);
    let dec = las.encode(&w, feats.view()).unwrap();
    let logits = dec.ctc_logits().unwrap().unwrap();
    let (frames, v) = logits.dim();
    let mut lp = logits.clone();
    lasr_nn::activation::log_softmax_rows(lp.view_mut());
    let flat: Vec<f32> = lp.iter().copied().collect();
    group.bench_function("ctc_prefix_beam16", |b| {
        b.iter(|| {
            lasr_decode::ctc_beam_search(
                &flat,
                frames,
                v,
                0,
                None,
                &lasr_decode::CtcSearchOptions::default(),
            )
            .unwrap()
        })
    });
    group.finish();
}

fn shipped_search(c: &mut Criterion) {
    let assets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let model = lasr_model::ModelFile::load(&assets.join("model.safetensors")).unwrap();
    let options = model
        .decode
        .clone()
        .expect("the shipped model recommends a decoder");
    let lm = lasr_decode::CharLm::load(assets.join("lm.bin"), &model.vocab).unwrap();
    let words = lasr_decode::WordLm::load(assets.join("words.bin"), &model.vocab).unwrap();
    let mut front = model.front_end().unwrap();
    let feats = front.file_features(assets.join("sample.wav")).unwrap();
    let w = model.inference_weights(WeightFormat::F32);
    // The mixture of an ensemble's models, as `transcribe` searches it.
    let lp = model.ctc_log_probs(&w, feats.view()).unwrap();
    let (frames, v) = lp.dim();
    let flat: Vec<f32> = lp.iter().copied().collect();
    let search = lasr_decode::CtcSearchOptions {
        beam_size: options.search.beam_size,
        lm_weight: options.lm_weight,
        insertion_bonus: options.ctc_insertion_bonus,
        oov_penalty: options.oov_penalty,
        word_lm_weight: options.word_lm_weight,
        word_bonus: options.word_bonus,
        ..lasr_decode::CtcSearchOptions::default()
    };
    let blank = model.las.config.blank;
    let mut group = c.benchmark_group("decode_shipped");
    group.sample_size(10);
    // The acoustic side: the listener(s) and CTC head(s) over the sample.
    group.bench_function("ctc_log_probs_shipped_sample", |b| {
        b.iter(|| model.ctc_log_probs(&w, feats.view()).unwrap())
    });
    group.bench_function("ctc_search_shipped_sample", |b| {
        b.iter(|| {
            lasr_decode::ctc_beam_search_with(
                &flat,
                frames,
                v,
                blank,
                Some(&lm),
                Some(lasr_decode::Words::Lm(&words)),
                &search,
            )
            .unwrap()
        })
    });
    group.finish();
}

fn rnnlm(c: &mut Criterion) {
    use rand::RngExt;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let config = lasr_model::RnnLmConfig {
        vocab_size: 32,
        embedding_dim: 64,
        hidden: 512,
        layers: 1,
        dropout: 0.0,
        reversed: false,
    };
    let lm = lasr_model::RnnLm::new(config, &mut rng).unwrap();
    let hyps: Vec<Vec<usize>> = (0..8)
        .map(|_| (0..150).map(|_| rng.random_range(4..32)).collect())
        .collect();
    let refs: Vec<&[usize]> = hyps.iter().map(Vec::as_slice).collect();
    let mut group = c.benchmark_group("rnnlm");
    group.sample_size(20);
    group.bench_function("score_8x150", |b| b.iter(|| lm.log_probs(&refs).unwrap()));
    // The same lists through the prefix-sharing scorer `--rnnlm` uses: random
    // hypotheses share no prefix, so this is its cost without the sharing, and a
    // list whose hypotheses differ only in their last 30 characters, as a CTC beam's
    // n-best mostly does.
    let shared: Vec<Vec<usize>> = hyps
        .iter()
        .map(|h| hyps[0][..120].iter().chain(&h[120..]).copied().collect())
        .collect();
    let shared_refs: Vec<&[usize]> = shared.iter().map(Vec::as_slice).collect();
    for format in [WeightFormat::F32, WeightFormat::Int8] {
        let scorer = lm
            .scorer(&lasr_decode::Vocab::librispeech(), format)
            .unwrap();
        group.bench_function(format!("scorer_8x150_distinct_{format}"), |b| {
            b.iter(|| scorer.log_probs(&refs).unwrap())
        });
        group.bench_function(format!("scorer_8x150_shared_120_{format}"), |b| {
            b.iter(|| scorer.log_probs(&shared_refs).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, decode, shipped_search, rnnlm);
// criterion_main!, with the heap policy the `lasr` binary sets (lasr_nn::heap).
fn main() {
    lasr_nn::heap::keep_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
