//! Finding utterances: the LibriSpeech directory layout, TSV manifests and Kaldi data
//! directories ([`crate::kaldi`]), told apart by [`corpus`].

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use lasr_features::Audio;

use crate::error::{Error, Result};

/// One utterance of a corpus, before its audio is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Utterance id (LibriSpeech `1089-134686-0000`, or the manifest's first column).
    pub id: String,
    /// Audio file (for a Kaldi segment, the whole recording).
    pub audio: PathBuf,
    /// Transcript as written in the corpus.
    pub transcript: String,
    /// The span of `audio` this utterance is (Kaldi `segments`); `None`: all of it.
    pub segment: Option<Segment>,
}

impl Entry {
    /// An utterance that is a whole audio file.
    pub fn new(
        id: impl Into<String>,
        audio: impl Into<PathBuf>,
        transcript: impl Into<String>,
    ) -> Self {
        Entry {
            id: id.into(),
            audio: audio.into(),
            transcript: transcript.into(),
            segment: None,
        }
    }

    /// This utterance's audio at the file's own rate: the whole file, or its segment cut
    /// out. Errors name the file (and the segment).
    pub fn load_audio(&self) -> Result<Audio> {
        let audio = lasr_features::load(&self.audio)?;
        if self.segment.is_none() {
            return Ok(audio);
        }
        Ok(Audio {
            samples: self.cut(&audio)?.to_vec(),
            sample_rate: audio.sample_rate,
        })
    }

    /// This entry's samples out of `audio`, its decoded recording: all of them, or
    /// its segment's.
    pub(crate) fn cut<'a>(&self, audio: &'a Audio) -> Result<&'a [f32]> {
        let Some(seg) = &self.segment else {
            return Ok(&audio.samples);
        };
        seg.cut(&audio.samples, audio.sample_rate)
            .map_err(|reason| Error::Segment {
                path: self.audio.clone(),
                id: self.id.clone(),
                reason,
            })
    }
}

/// A span of a recording in seconds, as Kaldi's `segments` file gives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Start in seconds from the start of the recording (>= 0).
    pub start: f64,
    /// End in seconds; `None` (Kaldi's `-1`) runs to the end of the recording.
    pub end: Option<f64>,
}

impl Segment {
    /// A segment may end this far past its recording (Kaldi `extract-segments`'
    /// `--max-overshoot` default); it is then cut at the recording's end.
    pub const MAX_OVERSHOOT_SECONDS: f64 = 0.5;

    /// The samples of this span out of a recording of `samples` at `rate` Hz, by Kaldi
    /// `extract-segments`' rules: sample indices are `seconds * rate` truncated; a start
    /// at or past the end is refused, an end up to [`Segment::MAX_OVERSHOOT_SECONDS`]
    /// past the end is cut there, further is refused. The error says why.
    pub fn cut<'a>(&self, samples: &'a [f32], rate: u32) -> std::result::Result<&'a [f32], String> {
        let rate = f64::from(rate);
        let n = samples.len();
        let duration = n as f64 / rate;
        let start = (self.start * rate).floor();
        if start.is_nan() || start < 0.0 || start >= n as f64 {
            return Err(format!(
                "starts at {:.3} s, at or after the end of the recording ({duration:.3} s)",
                self.start
            ));
        }
        let start = start as usize;
        let end = match self.end {
            None => n,
            Some(end) => {
                let e = (end * rate).floor();
                if !e.is_finite() || e >= n as f64 + (Self::MAX_OVERSHOOT_SECONDS * rate).floor() {
                    return Err(format!(
                        "ends at {end:.3} s, more than {} s after the end of the recording ({duration:.3} s)",
                        Self::MAX_OVERSHOOT_SECONDS
                    ));
                }
                (e.max(0.0) as usize).min(n)
            }
        };
        if end <= start {
            return Err(format!("is empty: samples {start}..{end} of the recording"));
        }
        Ok(&samples[start..end])
    }
}

/// Something in a corpus that was left out, with where it is (`line` 0: the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

/// The utterances of a corpus, sorted by id, and what was left out of it.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    pub entries: Vec<Entry>,
    /// Lines and utterances skipped (unsupported forms, ids missing from one of the
    /// files); the corpus is usable without them.
    pub warnings: Vec<Warning>,
}

pub(crate) fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every utterance under `root` in the LibriSpeech layout
/// (`speaker/chapter/speaker-chapter.trans.txt` with lines `ID TRANSCRIPT`, audio
/// `ID.flac` or `ID.wav` next to it), sorted by id. Transcript lines whose audio is
/// missing are errors naming the transcript file and line.
pub fn librispeech(root: &Path) -> Result<Vec<Entry>> {
    let mut trans = Vec::new();
    find_transcripts(root, &mut trans)?;
    if trans.is_empty() {
        return Err(Error::Empty {
            path: root.to_path_buf(),
            reason: "no *.trans.txt files below it".into(),
        });
    }
    let mut entries = Vec::new();
    for t in trans {
        let text = std::fs::read_to_string(&t).map_err(io(&t))?;
        let dir = t.parent().unwrap_or(Path::new("."));
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (id, transcript) =
                line.split_once(char::is_whitespace)
                    .ok_or_else(|| Error::Format {
                        path: t.clone(),
                        line: n + 1,
                        reason: "expected `ID TRANSCRIPT`".into(),
                    })?;
            let audio = ["flac", "wav"]
                .iter()
                .map(|ext| dir.join(format!("{id}.{ext}")))
                .find(|p| p.is_file())
                .ok_or_else(|| Error::Format {
                    path: t.clone(),
                    line: n + 1,
                    reason: format!("no audio {id}.flac or {id}.wav in {}", dir.display()),
                })?;
            entries.push(Entry::new(id, audio, transcript.trim()));
        }
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    check_unique(root, &entries)?;
    Ok(entries)
}

fn find_transcripts(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut items: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io(dir)))
        .collect::<Result<_>>()?;
    items.sort();
    for p in items {
        if p.is_dir() {
            find_transcripts(&p, out)?;
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".trans.txt"))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Utterances of a tab-separated manifest, one per line: `AUDIO<TAB>TRANSCRIPT`.
/// `AUDIO` is a path, or an id to which `.flac` or `.wav` is added; relative paths are
/// taken from `audio_root` (default: the manifest's directory). Blank lines and lines
/// starting with `#` are skipped. Extra columns are an error, so a swapped file is
/// caught rather than read as transcripts.
pub fn tsv(manifest: &Path, audio_root: Option<&Path>) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(manifest).map_err(io(manifest))?;
    let root = audio_root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.parent().unwrap_or(Path::new(".")).to_path_buf());
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |reason: String| Error::Format {
            path: manifest.to_path_buf(),
            line: n + 1,
            reason,
        };
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != 2 {
            return Err(fail(format!(
                "expected 2 tab-separated columns, found {}",
                cols.len()
            )));
        }
        let given = PathBuf::from(cols[0].trim());
        let base = if given.is_absolute() {
            given.clone()
        } else {
            root.join(&given)
        };
        let audio = if base.extension().is_some() && base.is_file() {
            base
        } else {
            ["flac", "wav"]
                .iter()
                .map(|ext| {
                    let mut p = base.clone().into_os_string();
                    p.push(format!(".{ext}"));
                    PathBuf::from(p)
                })
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    fail(format!(
                        "no audio at {} (nor with .flac or .wav added)",
                        base.display()
                    ))
                })?
        };
        let id = given
            .file_stem()
            .map_or_else(|| cols[0].to_string(), |s| s.to_string_lossy().into_owned());
        entries.push(Entry::new(id, audio, cols[1].trim()));
    }
    if entries.is_empty() {
        return Err(Error::Empty {
            path: manifest.to_path_buf(),
            reason: "the manifest has no lines".into(),
        });
    }
    check_unique(manifest, &entries)?;
    Ok(entries)
}

pub(crate) fn check_unique(path: &Path, entries: &[Entry]) -> Result<()> {
    let mut seen = HashSet::new();
    for e in entries {
        if !seen.insert(e.id.as_str()) {
            return Err(Error::Format {
                path: path.to_path_buf(),
                line: 0,
                reason: format!("utterance id {} appears twice", e.id),
            });
        }
    }
    Ok(())
}

/// The corpus at `path`, its form told by what is there:
///
/// - a directory holding `wav.scp` and `text`: a Kaldi data directory ([`crate::kaldi`]);
/// - any other directory: the LibriSpeech layout ([`librispeech`]);
/// - a file: a TSV manifest, audio relative to the manifest ([`tsv`]).
///
/// A directory with `wav.scp` but no `text` is an error (a Kaldi directory missing its
/// transcripts), not read as LibriSpeech.
pub fn corpus(path: &Path) -> Result<Corpus> {
    if path.is_dir() {
        let scp = path.join("wav.scp");
        if scp.is_file() {
            if !path.join("text").is_file() {
                return Err(Error::Empty {
                    path: path.to_path_buf(),
                    reason: "it has wav.scp but no text: a Kaldi data directory needs both".into(),
                });
            }
            return crate::kaldi::kaldi(path);
        }
        Ok(Corpus {
            entries: librispeech(path)?,
            warnings: Vec::new(),
        })
    } else {
        Ok(Corpus {
            entries: tsv(path, None)?,
            warnings: Vec::new(),
        })
    }
}

/// The utterances of `path` in any form [`corpus`] reads. Warnings (lines a Kaldi
/// directory had to skip) are dropped: call [`corpus`] to report them.
pub fn entries(path: &Path) -> Result<Vec<Entry>> {
    corpus(path).map(|c| c.entries)
}
