//! On-disk cache of raw (pre-CMVN) log-mel features, one file per utterance.
//!
//! Layout: `ROOT/<config hash>/<key hash>.feats`, plus `config.json` in each config
//! directory saying which feature settings it holds. The config hash covers the cache
//! format, this crate's version, the front-end version and every [`FeatureConfig`]
//! field that changes features (SpecAugment, applied at training time, does not); the
//! key of an utterance covers its audio file (canonical path, size and modification
//! time), its Kaldi segment and its speed-perturbation factor. So changing the feature
//! settings or rewriting an audio file misses the cache, and a new config never reads
//! an old config's files. (A rewrite that keeps both size and modification time, to
//! the file system's time resolution, is not noticed; neither is a change to the
//! feature code itself, which must bump [`CACHE_VERSION`].)
//!
//! Why one file per utterance rather than one per corpus: an added, removed or changed
//! audio file costs one entry, not the whole corpus; corpora that share files (or
//! runs that share a cache) share entries; workers read and write in parallel without
//! coordination; and a damaged file loses one utterance's features.
//!
//! A file: magic `LASRFEAT`, format version (u32), key length (u32), the key bytes,
//! rows and columns (u64 each), the features (f32, row-major), and a CRC-32 of
//! everything before it; integers little-endian. Reading checks the lengths against
//! the file size before allocating, then the checksum, then that the stored key is the
//! one asked for (a hash collision is a miss, never another utterance's features).
//! Writes go to a temporary file in the same directory that is then renamed over the
//! entry, so a Ctrl-C or crash leaves the old entry or the new one, never half of one.
//! Entries are not fsynced: after a power loss a renamed file can hold garbage, which
//! the checksum catches (the entry is then recomputed and rewritten).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use lasr_features::{FeatureConfig, FRONT_END_VERSION};
use ndarray::Array2;

use crate::corpus::{io, Segment, Warning};
use crate::error::{Error, Result};

/// Version of the file layout and of what features mean; bump it when either changes
/// (including a change to the feature code that alters its output).
pub const CACHE_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"LASRFEAT";
/// Magic, version, key length, rows, columns, checksum.
const FIXED_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 4;
/// Temporary files older than this are left over from an interrupted run.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// A directory of cached features for one feature configuration.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    /// `ROOT/<config hash>`.
    dir: PathBuf,
    /// What the config hash was computed from; part of every key.
    config: Vec<u8>,
    /// Feature width every entry must have.
    dim: usize,
}

/// What identifies an audio file's content without reading it.
#[derive(Debug, Clone)]
pub(crate) struct FileStamp(Vec<u8>);

impl FileStamp {
    /// Canonical path (so a relative path or a symlink to the same file shares its
    /// entries), size and modification time of `path`; `None` when they cannot be
    /// had (then the file's features are not cached, only computed).
    pub(crate) fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        let mtime = match meta.modified().ok()?.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        let abs = std::fs::canonicalize(path).ok()?;
        let mut key = b"path=".to_vec();
        key.extend_from_slice(abs.as_os_str().as_encoded_bytes());
        key.extend_from_slice(format!("\0size={}\0mtime_ns={mtime}", meta.len()).as_bytes());
        Some(FileStamp(key))
    }
}

/// The outcome of a cache lookup.
#[derive(Debug)]
pub(crate) enum Lookup {
    Hit(Array2<f32>),
    Miss,
    /// The entry exists but cannot be used; the warning names the file and the problem.
    Bad(Warning),
}

/// 64-bit FNV-1a: stable across platforms and Rust versions (unlike `DefaultHasher`);
/// names files only, the full key is compared on reading.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl FeatureCache {
    /// The cache for features computed with `features`, under `root` (created if
    /// needed; an error names the directory that cannot be made).
    pub fn open(root: &Path, features: &FeatureConfig) -> Result<FeatureCache> {
        let mut relevant = features.clone();
        relevant.spec_augment = Default::default();
        let settings = serde_json::to_string(&relevant)
            .map_err(|e| Error::Config(format!("feature settings do not serialise: {e}")))?;
        let config = format!(
            "lasr feature cache v{CACHE_VERSION}, lasr-data {}, front end v{FRONT_END_VERSION}, features {settings}",
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes();
        let dir = root.join(format!("{:016x}", fnv64(&config)));
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let cache = FeatureCache {
            dir,
            config,
            dim: features.num_mel_bins,
        };
        let about = cache.dir.join("config.json");
        if !about.is_file() {
            // For people looking at the directory; never read back.
            let text = serde_json::to_string_pretty(&relevant).unwrap_or_default();
            let _ = cache.write_atomic("config.json", text.as_bytes());
        }
        cache.remove_stale_temporaries();
        Ok(cache)
    }

    /// The directory holding this configuration's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of the features of `segment` of the file stamped `stamp` at speed
    /// `factor`.
    pub(crate) fn key(&self, stamp: &FileStamp, segment: Option<&Segment>, factor: f32) -> Vec<u8> {
        let mut key = self.config.clone();
        key.push(0);
        key.extend_from_slice(&stamp.0);
        let seg = match segment {
            None => "whole".to_string(),
            // Exact bit patterns: 1.5 and 1.50000001 are different spans.
            Some(s) => format!(
                "{:016x}..{}",
                s.start.to_bits(),
                s.end
                    .map_or("end".into(), |e| format!("{:016x}", e.to_bits()))
            ),
        };
        key.extend_from_slice(
            format!("\0segment={seg}\0speed={:08x}", factor.to_bits()).as_bytes(),
        );
        key
    }

    fn file_name(key: &[u8]) -> String {
        format!("{:016x}.feats", fnv64(key))
    }

    /// The file an entry with `key` lives in.
    pub(crate) fn path_of(&self, key: &[u8]) -> PathBuf {
        self.dir.join(Self::file_name(key))
    }

    /// Reads the entry for `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Lookup {
        let path = self.path_of(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => {
                return Lookup::Bad(Warning {
                    path,
                    line: 0,
                    message: format!("cannot read feature cache entry ({e}); recomputed"),
                })
            }
        };
        match decode(&bytes, key, self.dim) {
            Ok(Some(feats)) => Lookup::Hit(feats),
            Ok(None) => Lookup::Miss,
            Err(reason) => Lookup::Bad(Warning {
                path,
                line: 0,
                message: format!("corrupt feature cache entry ({reason}); recomputed"),
            }),
        }
    }

    /// Stores `feats` `[T, F]` under `key`, atomically. A failure (disk full, read-only
    /// directory) is returned as a warning: the features are still good, only not
    /// cached.
    pub(crate) fn put(&self, key: &[u8], feats: &Array2<f32>) -> std::result::Result<(), Warning> {
        let bytes = encode(key, feats);
        let name = Self::file_name(key);
        self.write_atomic(&name, &bytes).map_err(|e| Warning {
            path: self.dir.join(&name),
            line: 0,
            message: format!("cannot write feature cache entry ({e}); features not cached"),
        })
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let r =
            std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, self.dir.join(name)));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    /// Deletes temporary files an interrupted run left behind (old enough that no
    /// running process is still writing them). Failures are ignored: they cost space,
    /// not correctness.
    fn remove_stale_temporaries(&self) {
        let Ok(items) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for item in items.flatten() {
            let name = item.file_name();
            let is_temp = name
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
            let old = item
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP);
            if is_temp && old {
                let _ = std::fs::remove_file(item.path());
            }
        }
    }
}

fn encode(key: &[u8], feats: &Array2<f32>) -> Vec<u8> {
    let (rows, cols) = feats.dim();
    let mut out = Vec::with_capacity(FIXED_BYTES + key.len() + 4 * rows * cols);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&CACHE_VERSION.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(rows as u64).to_le_bytes());
    out.extend_from_slice(&(cols as u64).to_le_bytes());
    for v in feats.iter() {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Reads little-endian integers off the front of a slice whose length was checked.
fn take<const N: usize>(bytes: &mut &[u8]) -> [u8; N] {
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    out
}

/// The features in `bytes` if they are stored under `key`; `Ok(None)` for another key;
/// an error saying what is wrong with a damaged file.
fn decode(
    bytes: &[u8],
    key: &[u8],
    dim: usize,
) -> std::result::Result<Option<Array2<f32>>, String> {
    let len = bytes.len();
    if len < FIXED_BYTES {
        return Err(format!("truncated: {len} bytes"));
    }
    let mut r = bytes;
    if &take::<8>(&mut r) != MAGIC {
        return Err("not a lasr feature cache file".into());
    }
    let version = u32::from_le_bytes(take(&mut r));
    if version != CACHE_VERSION {
        return Err(format!(
            "format version {version}, expected {CACHE_VERSION}"
        ));
    }
    let key_len = u32::from_le_bytes(take(&mut r)) as usize;
    if key_len > len - FIXED_BYTES {
        return Err(format!("truncated: a {key_len}-byte key in {len} bytes"));
    }
    let stored_key = &r[..key_len];
    r = &r[key_len..];
    let rows = u64::from_le_bytes(take(&mut r));
    let cols = u64::from_le_bytes(take(&mut r));
    let data_bytes = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(4))
        .and_then(|n| n.checked_add((FIXED_BYTES + key_len) as u64));
    if data_bytes != Some(len as u64) {
        return Err(format!(
            "length mismatch: {rows} x {cols} features need {} bytes, the file has {len}",
            data_bytes.map_or("too many".into(), |n| n.to_string())
        ));
    }
    let stored_crc = u32::from_le_bytes(bytes[len - 4..].try_into().map_err(|_| "truncated")?);
    if crc32fast::hash(&bytes[..len - 4]) != stored_crc {
        return Err("checksum mismatch".into());
    }
    if stored_key != key {
        return Ok(None);
    }
    if cols as usize != dim || rows == 0 {
        return Err(format!("{rows} x {cols} features, expected {dim} wide"));
    }
    let values: Vec<f32> = r[..r.len() - 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Array2::from_shape_vec((rows as usize, cols as usize), values)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_every_truncation_or_flip_is_caught() {
        let feats = Array2::from_shape_fn((3, 2), |(i, j)| i as f32 - 0.5 * j as f32);
        let bytes = encode(b"key", &feats);
        assert_eq!(decode(&bytes, b"key", 2).unwrap().unwrap(), feats);
        assert!(decode(&bytes, b"other", 2).unwrap().is_none());
        assert!(decode(&bytes, b"key", 3).is_err());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], b"key", 2).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                !matches!(decode(&b, b"key", 2), Ok(Some(_))),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
