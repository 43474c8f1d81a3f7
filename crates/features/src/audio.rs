//! Reading audio files: WAV (through `hound`) and FLAC (through `claxon`), downmixed to
//! mono `f32` samples at 16-bit integer scale, the scale Kaldi computes features on.
//!
//! Every sample format is mapped onto the 16-bit range so that features do not depend on
//! the container: an 8-bit sample is multiplied by 256, a 24-bit one divided by 256, a
//! 32-bit integer one divided by 65536, and a float one (nominally in [-1, 1]) multiplied
//! by 32768. Channels are averaged.
//!
//! The format is chosen by the file's first bytes, never its name. Untrusted input never
//! panics and never makes us allocate more than the file could hold.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use crate::error::{AudioErrorKind, Error, Result};
use crate::resample::Resampler;

/// Mono audio at 16-bit integer scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples, one per time step, at 16-bit integer scale (nominally -32768..32767).
    pub samples: Vec<f32>,
    /// Samples per second.
    pub sample_rate: u32,
}

impl Audio {
    /// Length in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }

    /// This audio at `rate` Hz, band-limited-resampled if it is at another rate.
    pub fn resampled(self, rate: u32) -> Result<Audio> {
        if self.sample_rate == rate {
            return Ok(self);
        }
        let resampler = Resampler::new(self.sample_rate, rate)?;
        Ok(Audio {
            samples: resampler.process(&self.samples),
            sample_rate: rate,
        })
    }
}

/// Reads and decodes `path` (WAV or FLAC) to mono at its own sample rate.
pub fn load(path: impl AsRef<Path>) -> Result<Audio> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, path)
}

/// Reads `path` and resamples it to `rate` Hz.
pub fn load_at_rate(path: impl AsRef<Path>, rate: u32) -> Result<Audio> {
    let path = path.as_ref();
    load(path)?.resampled(rate).map_err(|e| e.in_file(path))
}

/// Decodes an in-memory WAV or FLAC file. `path` is only used to name the file in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<Audio> {
    let fail = |kind| Error::Audio {
        path: path.to_path_buf(),
        kind,
    };
    if bytes.is_empty() {
        return Err(fail(AudioErrorKind::Empty));
    }
    if bytes.starts_with(b"RIFF") || bytes.starts_with(b"RIFX") || bytes.starts_with(b"RF64") {
        if bytes.len() < 12 {
            return Err(fail(AudioErrorKind::TruncatedHeader { format: "WAV" }));
        }
        if &bytes[8..12] != b"WAVE" {
            return Err(fail(AudioErrorKind::UnknownFormat {
                magic: printable(&bytes[..12]),
            }));
        }
        return decode_wav(bytes).map_err(fail);
    }
    if bytes.starts_with(b"fLaC") {
        return decode_flac(bytes).map_err(fail);
    }
    // Files shorter than any magic number that are a prefix of one are cut-off headers.
    if b"RIFF".starts_with(bytes) || b"fLaC".starts_with(bytes) {
        let format = if bytes[0] == b'R' { "WAV" } else { "FLAC" };
        return Err(fail(AudioErrorKind::TruncatedHeader { format }));
    }
    Err(fail(AudioErrorKind::UnknownFormat {
        magic: printable(&bytes[..bytes.len().min(12)]),
    }))
}

/// Shows leading bytes the way a user would recognise them: as text when they are text.
fn printable(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in bytes {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s.push('"');
    s
}

/// Walks the RIFF chunks to check what `hound` would otherwise reject with a vague
/// message, or accept and then choke on (zero channels).
/// Returns the bytes each sample occupies (block align / channels).
fn check_wav_header(bytes: &[u8]) -> std::result::Result<usize, AudioErrorKind> {
    const FORMAT: &str = "WAV";
    if !bytes.starts_with(b"RIFF") {
        return Err(AudioErrorKind::Unsupported {
            format: FORMAT,
            reason: format!(
                "{} container (only little-endian RIFF is read)",
                String::from_utf8_lossy(&bytes[..4])
            ),
        });
    }
    let mut pos = 12usize;
    let mut container = None;
    loop {
        let Some(header) = bytes.get(pos..pos + 8) else {
            // Ran out of chunks before finding both "fmt " and "data".
            return Err(AudioErrorKind::TruncatedHeader { format: FORMAT });
        };
        let id = &header[..4];
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if size < 16 {
                return Err(AudioErrorKind::BadHeader {
                    format: FORMAT,
                    reason: format!("\"fmt \" chunk is {size} bytes, at least 16 are needed"),
                });
            }
            let Some(fmt) = bytes.get(body..body + 16) else {
                return Err(AudioErrorKind::TruncatedHeader { format: FORMAT });
            };
            let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
            let rate = u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]);
            let block_align = u16::from_le_bytes([fmt[12], fmt[13]]);
            let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
            if channels == 0 {
                return Err(AudioErrorKind::ZeroChannels);
            }
            if rate == 0 {
                return Err(AudioErrorKind::ZeroSampleRate);
            }
            if bits == 0 {
                return Err(AudioErrorKind::BadHeader {
                    format: FORMAT,
                    reason: "0 bits per sample".into(),
                });
            }
            if block_align == 0 || block_align % channels != 0 {
                return Err(AudioErrorKind::BadHeader {
                    format: FORMAT,
                    reason: format!("block align {block_align} does not fit {channels} channels"),
                });
            }
            container = Some(usize::from(block_align / channels));
        } else if id == b"data" {
            // hound reports a missing "fmt " chunk before "data" itself.
            return Ok(container.unwrap_or(0));
        }
        if size > bytes.len() - body.min(bytes.len()) && id != b"data" {
            return Err(AudioErrorKind::BadHeader {
                format: FORMAT,
                reason: format!(
                    "chunk \"{}\" claims {size} bytes but only {} remain in the file",
                    String::from_utf8_lossy(id),
                    bytes.len().saturating_sub(body)
                ),
            });
        }
        // Chunks are padded to an even length.
        pos = body + size + (size & 1);
    }
}

fn decode_wav(bytes: &[u8]) -> std::result::Result<Audio, AudioErrorKind> {
    const FORMAT: &str = "WAV";
    let container = check_wav_header(bytes)?;
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(wav_error)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    let claimed = u64::from(reader.len());
    let dense = container * 8 == usize::from(spec.bits_per_sample);
    let mono = match spec.sample_format {
        hound::SampleFormat::Float if spec.bits_per_sample != 32 => {
            return Err(AudioErrorKind::Unsupported {
                format: FORMAT,
                reason: format!("{}-bit float samples", spec.bits_per_sample),
            })
        }
        hound::SampleFormat::Int if !(1..=32).contains(&spec.bits_per_sample) => {
            return Err(AudioErrorKind::Unsupported {
                format: FORMAT,
                reason: format!("{}-bit integer samples", spec.bits_per_sample),
            })
        }
        // hound has found the data chunk and stands at its start: convert the bytes in
        // bulk, which is an order of magnitude faster than hound's sample iterator.
        format if dense => {
            let start = reader.into_inner().position() as usize;
            let data = &bytes[start.min(bytes.len())..];
            let available = (data.len() / container) as u64;
            let n = claimed.min(available) as usize;
            let frames = n / channels;
            let data = &data[..frames * channels * container];
            let float = format == hound::SampleFormat::Float;
            let mono = convert_dense(data, container, channels, float)?;
            if n < claimed as usize {
                return Err(AudioErrorKind::TruncatedData {
                    format: FORMAT,
                    expected: claimed,
                    found: n as u64,
                });
            }
            if !n.is_multiple_of(channels) {
                return Err(AudioErrorKind::BadHeader {
                    format: FORMAT,
                    reason: format!("{n} samples do not divide into {channels} channels"),
                });
            }
            mono
        }
        // Valid bits narrower than their container (24 in 32, 12 in 16): hound knows
        // the conventions, so let it read them.
        _ => decode_wav_sparse(reader, claimed)?,
    };
    if mono.is_empty() {
        return Err(AudioErrorKind::NoSamples);
    }
    Ok(Audio {
        samples: mono,
        sample_rate: spec.sample_rate,
    })
}

/// Interleaved little-endian samples of `width` bytes to mono at 16-bit scale.
fn convert_dense(
    data: &[u8],
    width: usize,
    channels: usize,
    float: bool,
) -> std::result::Result<Vec<f32>, AudioErrorKind> {
    let one = |b: &[u8]| -> f32 {
        match (width, float) {
            (1, _) => (f32::from(b[0]) - 128.0) * 256.0,
            (2, _) => f32::from(i16::from_le_bytes([b[0], b[1]])),
            (3, _) => (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 256.0,
            (4, false) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 65536.0,
            (_, _) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * 32768.0,
        }
    };
    let mono: Vec<f32> = if channels == 1 {
        data.chunks_exact(width).map(one).collect()
    } else {
        let scale = 1.0 / channels as f32;
        data.chunks_exact(width * channels)
            .map(|frame| frame.chunks_exact(width).map(one).sum::<f32>() * scale)
            .collect()
    };
    if float {
        if let Some(i) = mono.iter().position(|v| !v.is_finite()) {
            return Err(AudioErrorKind::CorruptData {
                format: "WAV",
                reason: format!("sample {i} is not a finite number"),
            });
        }
    }
    Ok(mono)
}

/// The slow path through hound's sample iterator, for containers wider than their bits.
fn decode_wav_sparse(
    mut reader: hound::WavReader<Cursor<&[u8]>>,
    claimed: u64,
) -> std::result::Result<Vec<f32>, AudioErrorKind> {
    const FORMAT: &str = "WAV";
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    let scale = 2f32.powi(16 - i32::from(spec.bits_per_sample));
    let mut mono = Vec::with_capacity((claimed as usize / channels).min(1 << 24));
    let (mut read, mut acc) = (0u64, 0f32);
    for s in reader.samples::<i32>() {
        let s = s.map_err(|e| match e {
            hound::Error::IoError(_) => AudioErrorKind::TruncatedData {
                format: FORMAT,
                expected: claimed,
                found: read,
            },
            other => wav_error(other),
        })?;
        acc += s as f32 * scale;
        read += 1;
        if read.is_multiple_of(channels as u64) {
            mono.push(acc / channels as f32);
            acc = 0.0;
        }
    }
    if read < claimed {
        return Err(AudioErrorKind::TruncatedData {
            format: FORMAT,
            expected: claimed,
            found: read,
        });
    }
    Ok(mono)
}

fn wav_error(e: hound::Error) -> AudioErrorKind {
    const FORMAT: &str = "WAV";
    match e {
        hound::Error::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            AudioErrorKind::TruncatedHeader { format: FORMAT }
        }
        hound::Error::IoError(e) => AudioErrorKind::BadHeader {
            format: FORMAT,
            reason: e.to_string(),
        },
        hound::Error::FormatError(reason) => AudioErrorKind::BadHeader {
            format: FORMAT,
            reason: reason.to_string(),
        },
        hound::Error::Unsupported => AudioErrorKind::Unsupported {
            format: FORMAT,
            reason: "encoding other than integer PCM or IEEE float".into(),
        },
        other => AudioErrorKind::BadHeader {
            format: FORMAT,
            reason: other.to_string(),
        },
    }
}

fn decode_flac(bytes: &[u8]) -> std::result::Result<Audio, AudioErrorKind> {
    const FORMAT: &str = "FLAC";
    let mut reader = claxon::FlacReader::new(Cursor::new(bytes)).map_err(|e| match e {
        claxon::Error::IoError(_) => AudioErrorKind::TruncatedHeader { format: FORMAT },
        claxon::Error::FormatError(reason) => AudioErrorKind::BadHeader {
            format: FORMAT,
            reason: reason.into(),
        },
        claxon::Error::Unsupported(reason) => AudioErrorKind::Unsupported {
            format: FORMAT,
            reason: reason.into(),
        },
    })?;
    let info = reader.streaminfo();
    let channels = info.channels as usize;
    if channels == 0 {
        return Err(AudioErrorKind::ZeroChannels);
    }
    if info.sample_rate == 0 {
        return Err(AudioErrorKind::ZeroSampleRate);
    }
    let bits = info.bits_per_sample as i32;
    let scale = 2f32.powi(16 - bits) / channels as f32;
    let claimed = info.samples.map(|n| n * channels as u64);
    // Compressed audio can be far smaller than its samples, but a FLAC frame cannot
    // compress below about a bit per sample, which bounds a sane pre-allocation.
    let capacity = (claimed.unwrap_or(0) as usize / channels).min(bytes.len() * 8);
    let mut mono: Vec<f32> = Vec::with_capacity(capacity);
    let mut blocks = reader.blocks();
    let mut buffer = Vec::new();
    let corrupt = |e: claxon::Error, read: u64| match e {
        claxon::Error::IoError(_) => AudioErrorKind::TruncatedData {
            format: FORMAT,
            expected: claimed.unwrap_or(read),
            found: read,
        },
        claxon::Error::FormatError(reason) | claxon::Error::Unsupported(reason) => {
            AudioErrorKind::CorruptData {
                format: FORMAT,
                reason: reason.into(),
            }
        }
    };
    // Whole blocks at a time into one reused buffer, rather than sample by sample.
    loop {
        let read = (mono.len() * channels) as u64;
        let block = match blocks.read_next_or_eof(buffer) {
            Ok(Some(block)) => block,
            Ok(None) => break,
            Err(e) => return Err(corrupt(e, read)),
        };
        if block.channels() as usize != channels {
            return Err(AudioErrorKind::CorruptData {
                format: FORMAT,
                reason: format!(
                    "a frame has {} channels, the stream {channels}",
                    block.channels()
                ),
            });
        }
        let start = mono.len();
        mono.extend(block.channel(0).iter().map(|&s| s as f32 * scale));
        for ch in 1..channels as u32 {
            for (m, &s) in mono[start..].iter_mut().zip(block.channel(ch)) {
                *m += s as f32 * scale;
            }
        }
        buffer = block.into_buffer();
    }
    let read = (mono.len() * channels) as u64;
    if let Some(expected) = claimed {
        if read < expected {
            return Err(AudioErrorKind::TruncatedData {
                format: FORMAT,
                expected,
                found: read,
            });
        }
    }
    if mono.is_empty() {
        return Err(AudioErrorKind::NoSamples);
    }
    Ok(Audio {
        samples: mono,
        sample_rate: info.sample_rate,
    })
}

/// The path in an error, for callers that want to report per-file failures.
pub fn error_path(e: &Error) -> Option<&PathBuf> {
    match e {
        Error::Io { path, .. } | Error::Audio { path, .. } => Some(path),
        _ => None,
    }
}

/// Expands `inputs` into audio files: files are kept as given, directories are walked
/// recursively for `.wav` and `.flac` files (any case), sorted for a stable order.
/// Unreadable directories are errors naming them.
pub fn collect_audio_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()).map_err(io))
            .collect::<Result<_>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_audio_name(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut out)?;
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn is_audio_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("wav") || e.eq_ignore_ascii_case("flac"))
}
