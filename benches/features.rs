//! Front-end throughput on one thread. Throughput is declared in seconds of audio, so
//! criterion's "elem/s" reads as seconds of audio processed per second.
//!
//!     cargo bench -p lasr-features --bench features

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lasr_features::{Fbank, FeatureConfig, Resampler};

/// Speech-band noise with some tones, at 16-bit scale: the content does not change the
/// work done, but keeps values realistic.
fn signal(seconds: usize, rate: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..seconds * rate)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let t = i as f32 / rate as f32;
            3000.0 * noise + 5000.0 * (2.0 * std::f32::consts::PI * 220.0 * t).sin()
        })
        .collect()
}

fn fbank(c: &mut Criterion) {
    let seconds = 60;
    let audio = signal(seconds, 16000);
    let mut group = c.benchmark_group("fbank");
    group.throughput(Throughput::Elements(seconds as u64));
    group.sample_size(30);
    let config = FeatureConfig::default();
    let mut fb = Fbank::new(&config).unwrap();
    let mut out = vec![0f32; config.num_frames(audio.len()) * config.num_mel_bins];
    group.bench_function(BenchmarkId::new("kaldi_80bin_16k", "60s"), |b| {
        b.iter(|| fb.compute_into(&audio, &mut out).unwrap())
    });
    group.finish();
}

fn resample(c: &mut Criterion) {
    let seconds = 60;
    let mut group = c.benchmark_group("resample_to_16k");
    group.throughput(Throughput::Elements(seconds as u64));
    group.sample_size(20);
    for from in [8000u32, 44100] {
        let audio = signal(seconds, from as usize);
        let r = Resampler::new(from, 16000).unwrap();
        group.bench_function(BenchmarkId::new(format!("from_{from}"), "60s"), |b| {
            b.iter(|| r.process(&audio))
        });
    }
    group.finish();
}

/// The same audio as a 16-bit WAV and as a FLAC file, in memory.
fn encoded(audio: &[f32]) -> (Vec<u8>, Vec<u8>) {
    use flacenc::component::BitRepr;
    use flacenc::error::Verify;
    let ints: Vec<i32> = audio
        .iter()
        .map(|&v| v.round().clamp(-32768.0, 32767.0) as i32)
        .collect();
    let mut wav = std::io::Cursor::new(Vec::new());
    {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut wav, spec).unwrap();
        for &v in &ints {
            w.write_sample(v as i16).unwrap();
        }
        w.finalize().unwrap();
    }
    let config = flacenc::config::Encoder::default().into_verified().unwrap();
    let source = flacenc::source::MemSource::from_samples(&ints, 1, 16, 16000);
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size).unwrap();
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).unwrap();
    (wav.into_inner(), sink.as_slice().to_vec())
}

fn decode(c: &mut Criterion) {
    let seconds = 60;
    let (wav, flac) = encoded(&signal(seconds, 16000));
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(seconds as u64));
    group.sample_size(20);
    let path = std::path::Path::new("bench");
    group.bench_function(BenchmarkId::new("wav_16bit_16k", "60s"), |b| {
        b.iter(|| lasr_features::decode(&wav, path).unwrap())
    });
    group.bench_function(BenchmarkId::new("flac_16bit_16k", "60s"), |b| {
        b.iter(|| lasr_features::decode(&flac, path).unwrap())
    });
    group.finish();
}

criterion_group!(benches, fbank, resample, decode);
criterion_main!(benches);
