//! Finding utterances: the LibriSpeech directory layout and TSV manifests.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One utterance of a corpus, before its audio is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Utterance id (LibriSpeech `1089-134686-0000`, or the manifest's first column).
    pub id: String,
    /// Audio file.
    pub audio: PathBuf,
    /// Transcript as written in the corpus.
    pub transcript: String,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
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
            entries.push(Entry {
                id: id.to_string(),
                audio,
                transcript: transcript.trim().to_string(),
            });
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
        entries.push(Entry {
            id,
            audio,
            transcript: cols[1].trim().to_string(),
        });
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

fn check_unique(path: &Path, entries: &[Entry]) -> Result<()> {
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

/// The utterances of `path`: a directory is read as the LibriSpeech layout, a file as a
/// TSV manifest (audio relative to the manifest).
pub fn entries(path: &Path) -> Result<Vec<Entry>> {
    if path.is_dir() {
        librispeech(path)
    } else {
        tsv(path, None)
    }
}
