//! Fixture builders shared by the integration tests: every file is synthesised here,
//! none is committed.
#![allow(dead_code)]

use std::io::Cursor;

use flacenc::component::BitRepr;
use flacenc::error::Verify;

/// `len` samples of a sum of two tones, at 16-bit scale, peak about 20000.
pub fn test_signal(len: usize, rate: u32, seed: u32) -> Vec<i32> {
    (0..len)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let f1 = 220.0 + f64::from(seed) * 37.0;
            let v = 14000.0 * (2.0 * std::f64::consts::PI * f1 * t).sin()
                + 6000.0 * (2.0 * std::f64::consts::PI * 1234.5 * t + f64::from(seed)).sin();
            v.round() as i32
        })
        .collect()
}

/// A WAV file in memory. `channels` holds one sample vector per channel, already in the
/// target integer range (or in [-1, 1] scaled by 2^(bits-1) for floats, see below).
pub fn wav_int(channels: &[Vec<i32>], rate: u32, bits: u16) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: hound::SampleFormat::Int,
    };
    let mut buf = Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut buf, spec).unwrap();
        for i in 0..channels[0].len() {
            for ch in channels {
                match bits {
                    8 => w.write_sample(ch[i] as i8).unwrap(),
                    16 => w.write_sample(ch[i] as i16).unwrap(),
                    _ => w.write_sample(ch[i]).unwrap(),
                }
            }
        }
        w.finalize().unwrap();
    }
    buf.into_inner()
}

/// A 32-bit float WAV file in memory.
pub fn wav_float(channels: &[Vec<f32>], rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut buf = Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut buf, spec).unwrap();
        for i in 0..channels[0].len() {
            for ch in channels {
                w.write_sample(ch[i]).unwrap();
            }
        }
        w.finalize().unwrap();
    }
    buf.into_inner()
}

/// A FLAC file in memory, encoded by the pure-Rust `flacenc`.
pub fn flac(channels: &[Vec<i32>], rate: u32, bits: usize) -> Vec<u8> {
    let n = channels[0].len();
    let mut interleaved = Vec::with_capacity(n * channels.len());
    for i in 0..n {
        for ch in channels {
            interleaved.push(ch[i]);
        }
    }
    let config = flacenc::config::Encoder::default().into_verified().unwrap();
    let source =
        flacenc::source::MemSource::from_samples(&interleaved, channels.len(), bits, rate as usize);
    let stream = flacenc::encode_with_fixed_block_size(&config, source, config.block_size).unwrap();
    let mut sink = flacenc::bitsink::ByteSink::new();
    stream.write(&mut sink).unwrap();
    sink.as_slice().to_vec()
}
