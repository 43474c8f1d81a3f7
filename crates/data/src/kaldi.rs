//! Kaldi data directories: `wav.scp`, `text` and, optionally, `segments`.
//!
//! - `wav.scp`: `ID PATH` per line, `PATH` the rest of the line (it may hold spaces).
//!   Relative paths are taken from the current directory, as Kaldi takes them (its
//!   scripts run from the recipe directory), not from the data directory; absolute
//!   paths work from anywhere. Entries store the absolute path. Piped commands
//!   (`ID sox ... |`), standard input (`-`) and archive offsets (`foo.ark:1234`) are not
//!   supported: such lines are reported with file and line and skipped, as are paths
//!   to files that do not exist.
//! - `text`: `ID TRANSCRIPT` per line (an empty transcript is allowed).
//! - `segments` (if present): `SEGMENT_ID RECORDING_ID START END` in seconds, `END`
//!   `-1` for the end of the recording; the utterances are then the segments, cut out
//!   of the `wav.scp` recordings ([`crate::Segment::cut`]) and transcribed by `text`
//!   under the segment id. Lines Kaldi's `extract-segments` rejects (negative start,
//!   end before start, unparsable times) and lines with a channel field (audio is
//!   downmixed, so a channel cannot be picked) are reported and skipped.
//! - Utterances in one file but not in the other are reported (count and the first
//!   few ids) and skipped. `utt2spk`, `spk2utt` and the rest are ignored.
//!
//! A line Kaldi could not parse at all (an id alone in `wav.scp`) is reported and
//! skipped; an id twice in one file is an error, as it is for Kaldi.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::corpus::{io, Corpus, Entry, Segment, Warning};
use crate::error::{Error, Result};

/// How many ids a mismatch warning lists.
const SHOW_IDS: usize = 5;

/// One `ID REST` line: line number (1-based), id, rest (trimmed, maybe empty).
fn id_lines(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    text.lines().enumerate().filter_map(|(n, line)| {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        let (id, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        Some((n + 1, id, rest.trim()))
    })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn duplicate(path: &Path, line: usize, id: &str) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        line,
        reason: format!("utterance id {id} appears twice"),
    }
}

/// `count` ids and the first few of them, for a warning.
fn some_ids(ids: &[&str]) -> String {
    let mut s = ids
        .iter()
        .take(SHOW_IDS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOW_IDS {
        s.push_str(", ...");
    }
    s
}

/// True for `foo.ark:1234` (and `foo.ark:1234[...]`): audio inside a Kaldi archive.
fn is_archive_offset(rest: &str) -> bool {
    rest.rsplit_once(':').is_some_and(|(file, tail)| {
        let digits = tail.split('[').next().unwrap_or("");
        !file.is_empty() && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The utterances of the Kaldi data directory `dir`, sorted by id, with the lines and
/// utterances that had to be skipped as warnings. Errors: a file cannot be read, an id
/// appears twice in one file, or nothing usable is left.
pub fn kaldi(dir: &Path) -> Result<Corpus> {
    let scp_path = dir.join("wav.scp");
    let text_path = dir.join("text");
    let seg_path = dir.join("segments");
    let mut warnings = Vec::new();
    let warn = |warnings: &mut Vec<Warning>, path: &Path, line: usize, message: String| {
        warnings.push(Warning {
            path: path.to_path_buf(),
            line,
            message,
        })
    };

    // wav.scp: every id it lists, and the usable ones with their audio.
    let scp = read(&scp_path)?;
    let mut listed: HashMap<&str, usize> = HashMap::new();
    let mut recordings: HashMap<&str, PathBuf> = HashMap::new();
    let mut missing = 0usize;
    let mut first_missing = None;
    for (line, id, rest) in id_lines(&scp) {
        if listed.insert(id, line).is_some() {
            return Err(duplicate(&scp_path, line, id));
        }
        let unsupported = if rest.is_empty() {
            Some("expected `ID PATH`; skipped".to_string())
        } else if rest.ends_with('|') {
            Some(format!(
                "{id}: piped commands are not supported (`{rest}`); run the command and list the file it writes; skipped"
            ))
        } else if rest == "-" {
            Some(format!("{id}: standard input is not supported; skipped"))
        } else {
            None
        };
        if let Some(message) = unsupported {
            warn(&mut warnings, &scp_path, line, message);
            continue;
        }
        let audio = std::path::absolute(rest).unwrap_or_else(|_| PathBuf::from(rest));
        if !audio.is_file() {
            let message = if is_archive_offset(rest) && !Path::new(rest).exists() {
                format!("{id}: audio inside Kaldi archives (`{rest}`) is not supported; skipped")
            } else {
                missing += 1;
                first_missing.get_or_insert_with(|| audio.clone());
                format!("{id}: no audio file {}; skipped", audio.display())
            };
            warn(&mut warnings, &scp_path, line, message);
            continue;
        }
        recordings.insert(id, audio);
    }

    // text.
    let text = read(&text_path)?;
    let mut transcripts: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
    for (line, id, rest) in id_lines(&text) {
        if transcripts.insert(id, (rest, line)).is_some() {
            return Err(duplicate(&text_path, line, id));
        }
    }

    // The utterances: segments of recordings, or the recordings themselves.
    // `source` names the file the utterance ids come from, for the mismatch warnings.
    let seg_text;
    let mut utterances: BTreeMap<&str, (PathBuf, Option<Segment>)> = BTreeMap::new();
    // Every utterance id the audio side lists, usable or not (so an id skipped above
    // is not reported a second time as "no audio").
    let mut audio_ids: Vec<&str>;
    let source;
    if seg_path.is_file() {
        source = seg_path.clone();
        seg_text = read(&seg_path)?;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut unknown_recording: Vec<&str> = Vec::new();
        for (line, id, rest) in id_lines(&seg_text) {
            if seen.insert(id, line).is_some() {
                return Err(duplicate(&seg_path, line, id));
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let bad = |reason: &str| format!("{id}: {reason}; skipped");
            if fields.len() == 4 {
                warn(
                    &mut warnings,
                    &seg_path,
                    line,
                    bad("a channel field is not supported (audio is downmixed to mono)"),
                );
                continue;
            }
            if fields.len() != 3 {
                warn(
                    &mut warnings,
                    &seg_path,
                    line,
                    bad("expected `SEGMENT_ID RECORDING_ID START END`"),
                );
                continue;
            }
            let (Ok(start), Ok(end)) = (fields[1].parse::<f64>(), fields[2].parse::<f64>()) else {
                warn(
                    &mut warnings,
                    &seg_path,
                    line,
                    bad("start and end must be numbers of seconds"),
                );
                continue;
            };
            // Kaldi's extract-segments test, plus finiteness.
            let to_end = end == -1.0;
            if !start.is_finite() || !end.is_finite() || start < 0.0 || (!to_end && end <= start) {
                warn(
                    &mut warnings,
                    &seg_path,
                    line,
                    bad(&format!(
                        "invalid span {} .. {} (start must be >= 0 and before the end, end -1 for the end of the recording)",
                        fields[1], fields[2]
                    )),
                );
                continue;
            }
            let rec = fields[0];
            match recordings.get(rec) {
                Some(audio) => {
                    utterances.insert(
                        id,
                        (
                            audio.clone(),
                            Some(Segment {
                                start,
                                end: (!to_end).then_some(end),
                            }),
                        ),
                    );
                }
                // Listed but unusable: already reported at its wav.scp line.
                None if listed.contains_key(rec) => {}
                None => unknown_recording.push(id),
            }
        }
        if !unknown_recording.is_empty() {
            warn(
                &mut warnings,
                &seg_path,
                0,
                format!(
                    "{} segments name recordings that are not in wav.scp, skipped: {}",
                    unknown_recording.len(),
                    some_ids(&unknown_recording)
                ),
            );
        }
        audio_ids = seen.into_keys().collect();
    } else {
        source = scp_path.clone();
        for (id, audio) in &recordings {
            utterances.insert(id, (audio.clone(), None));
        }
        audio_ids = listed.into_keys().collect();
    }
    audio_ids.sort_unstable();

    let mut no_text: Vec<&str> = Vec::new();
    let mut entries = Vec::with_capacity(utterances.len());
    for (id, (audio, segment)) in utterances {
        match transcripts.get(id) {
            Some((t, _)) => entries.push(Entry {
                id: id.to_string(),
                audio,
                transcript: t.to_string(),
                segment,
            }),
            None => no_text.push(id),
        }
    }
    if !no_text.is_empty() {
        warn(
            &mut warnings,
            &text_path,
            0,
            format!(
                "{} utterances of {} have no transcript here, skipped: {}",
                no_text.len(),
                source.display(),
                some_ids(&no_text)
            ),
        );
    }
    let no_audio: Vec<&str> = transcripts
        .keys()
        .copied()
        .filter(|id| audio_ids.binary_search(id).is_err())
        .collect();
    if !no_audio.is_empty() {
        warn(
            &mut warnings,
            &source,
            0,
            format!(
                "{} utterances of {} are not listed here, skipped: {}",
                no_audio.len(),
                text_path.display(),
                some_ids(&no_audio)
            ),
        );
    }

    if entries.is_empty() {
        let reason = match first_missing {
            Some(first) if missing > 0 && recordings.is_empty() => {
                let cwd = std::env::current_dir().unwrap_or_default();
                format!(
                    "none of the {missing} audio files in wav.scp exists (first: {}); relative paths are taken from the current directory {}, as Kaldi takes them",
                    first.display(),
                    cwd.display()
                )
            }
            _ => format!(
                "no utterance has both audio and a transcript ({} warnings; first: {})",
                warnings.len(),
                warnings
                    .first()
                    .map_or_else(|| "none".to_string(), |w| w.to_string())
            ),
        };
        return Err(Error::Empty {
            path: dir.to_path_buf(),
            reason,
        });
    }
    Ok(Corpus { entries, warnings })
}
