//! Checkpoints as safetensors files: every parameter under its PyTorch-style name, as
//! little-endian f32 (or, for files that only run a model, IEEE half precision:
//! [`Storage::F16`], or int8 recurrent matrices: [`Storage::Int8`]), with string
//! metadata (config, vocabulary, version...) in the header. Any safetensors reader
//! opens them (`safetensors.torch.load_file` gives a PyTorch state dict).
//!
//! Writes go to a temporary file in the same directory, are synced, then renamed over
//! the target, so a crash or Ctrl-C mid-write leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::module::Module;

/// How parameters are written. Reading accepts F32, F16, BF16 and int8 matrices with
/// their scales whatever was asked for, widening to f32 (exact: every half value, and
/// every integer times its f32 scale rounded once, is an f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Full precision: what training writes and resumes from.
    #[default]
    F32,
    /// IEEE half precision, rounded to nearest: half the bytes, for models that are
    /// only run. The rounding error is at most 2^-11 of the value for |v| >= 2^-14
    /// (10-bit mantissa), at most 2^-25 absolute below that (subnormals; under
    /// 2^-25 a weight becomes 0). Values up to 65520 round to f16's largest, 65504; a
    /// tensor with any larger value, which would become infinite, stays F32. F16
    /// rather than BF16 because trained weights are small and need mantissa, not range.
    F16,
    /// The recurrent layers' weight matrices (2-D tensors named `weight_ih...` or
    /// `weight_hh...`, PyTorch's names) as int8, each row `r` of `NAME` with its scale
    /// `s_r = max |W_r| / 127` in the f32 tensor `NAME_scale` `[rows]` and
    /// `W_rk ~ s_r q_rk` (`q` in -127..=127); everything else as [`Storage::F16`]
    /// (and a matrix with a non-finite value as F16 rules it). The integers and
    /// scales are exactly those int8 decoding ([`crate::WeightFormat::Int8`]) makes
    /// from the weights written, and it makes them again from `s_r q_rk` (scales to
    /// an ulp), so decoding in int8 reads such a file as it reads the 16-bit file of
    /// the same weights; the other formats compute with `s_r q_rk`, within `s_r / 2`
    /// of each weight. For files that only run a model, in int8: a quarter of f32 for
    /// those matrices, which are nearly all of a model.
    Int8,
}

/// Whether [`Storage::Int8`] stores tensor `name` of `shape` in 8 bits.
fn int8_candidate(name: &str, shape: &[usize]) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    shape.len() == 2 && (last.starts_with("weight_ih") || last.starts_with("weight_hh"))
}

/// The name of the scales of int8 tensor `name`.
pub fn int8_scale_name(name: &str) -> String {
    format!("{name}_scale")
}

/// The file in memory as safetensors, or an error saying it is not one.
fn parse(bytes: &[u8]) -> Result<SafeTensors<'_>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        ck(
            Path::new("<memory>"),
            format!("not a safetensors file: {e}"),
        )
    })
}

fn ck(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The safetensors bytes of `module`'s parameters, names prefixed with `prefix`.
pub fn to_bytes<M: Module>(
    module: &M,
    prefix: &str,
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    to_bytes_parts(&[(prefix, module as &dyn Module)], metadata)
}

/// Several modules in one file, each under its own prefix (say a model's optimiser
/// moments `m.` and `v.`), in f32.
pub fn to_bytes_parts(
    parts: &[(&str, &dyn Module)],
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    to_bytes_parts_as(parts, Storage::F32, metadata)
}

/// [`to_bytes_parts`] with the tensors written as `storage` says.
pub fn to_bytes_parts_as(
    parts: &[(&str, &dyn Module)],
    storage: Storage,
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
    for (prefix, module) in parts {
        module.visit(prefix, &mut |name, t| {
            let shape = t.shape().to_vec();
            let finite = t.iter().all(|v| v.is_finite());
            if storage == Storage::Int8 && finite && int8_candidate(&name, &shape) {
                let t = t
                    .into_dimensionality::<ndarray::Ix2>()
                    .expect("two dimensions, checked above");
                let mut q = Vec::with_capacity(t.len());
                let mut scales = Vec::with_capacity(4 * t.nrows());
                for row in t.rows() {
                    let s = crate::packed::int8_scale(row);
                    q.extend(row.iter().map(|&v| crate::packed::quantize(v, s) as u8));
                    scales.extend_from_slice(&s.to_le_bytes());
                }
                let rows = shape[0];
                tensors.push((int8_scale_name(&name), vec![rows], Dtype::F32, scales));
                tensors.push((name, shape, Dtype::I8, q));
                return;
            }
            // A value f16 cannot hold would come back as infinity: keep that tensor
            // whole rather than change what the model computes.
            let fits = storage != Storage::F32
                && t.iter()
                    .all(|&v| !v.is_finite() || f16::from_f32(v).is_finite());
            if fits {
                let bytes = t
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect();
                tensors.push((name, shape, Dtype::F16, bytes));
            } else {
                let bytes = t.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((name, shape, Dtype::F32, bytes));
            }
        });
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .expect("byte length matches shape by construction");
            (name.clone(), view)
        })
        .collect();
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.clone())
    };
    let bytes = safetensors::serialize(views, meta)
        .map_err(|e| ck(Path::new("<memory>"), e.to_string()))?;
    canonical_header(bytes)
}

/// `bytes` with the header's keys in sorted order. safetensors writes the metadata in
/// a `HashMap`'s order, which changes from run to run; sorted, the same model gives
/// the same file, byte for byte, so a model's build can be checked by its hash.
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |why: &str| ck(Path::new("<memory>"), format!("header: {why}"));
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| bad("too short"))?;
    let end = 8usize.checked_add(len).filter(|&e| e <= bytes.len());
    let end = end.ok_or_else(|| bad("longer than the file"))?;
    // Two levels of sorted maps: the tensors' entries and `__metadata__`'s keys, sorted
    // whatever serde_json's `preserve_order` feature says about its own maps.
    type Sorted =
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, serde_json::Value>>;
    let header: Sorted = serde_json::from_slice(&bytes[8..end]).map_err(|e| bad(&e.to_string()))?;
    let mut text = serde_json::to_vec(&header).map_err(|e| bad(&e.to_string()))?;
    // The data starts 8-byte aligned, as safetensors pads it.
    text.resize(text.len().next_multiple_of(8), b' ');
    if text.len() == len {
        // The same JSON in another order and padded alike: no second copy of the data.
        let mut bytes = bytes;
        bytes[8..end].copy_from_slice(&text);
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// Writes `module` to `path` atomically (temporary file, fsync, rename).
pub fn save<M: Module>(path: &Path, module: &M, metadata: &HashMap<String, String>) -> Result<()> {
    let bytes = to_bytes(module, "", metadata).map_err(|e| match e {
        Error::Checkpoint { reason, .. } => ck(path, reason),
        other => other,
    })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` so that `path` holds either its old content or all of the
/// new, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |p: &Path, source| Error::Io {
        path: p.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| ck(path, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a checkpoint into `module`, which must have exactly the file's tensors
/// (names, shapes; F32, F16, BF16, or I8 with scales); returns the file's metadata.
/// Errors name the file and the tensor at fault. `module` is only changed when the whole file fits.
pub fn load<M: Module>(path: &Path, module: &mut M) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes, "", module).map_err(|e| match e {
        Error::Checkpoint { reason, .. } => ck(path, reason),
        other => other,
    })
}

/// [`load`] from bytes in memory; tensor names carry `prefix`.
pub fn from_bytes<M: Module>(
    bytes: &[u8],
    prefix: &str,
    module: &mut M,
) -> Result<HashMap<String, String>> {
    from_bytes_parts(bytes, &mut [(prefix, module as &mut dyn Module)])
}

/// Reads a file written by [`to_bytes_parts`] or [`to_bytes_parts_as`] into the
/// same parts. Strict: every tensor of every part must be there with its shape, and
/// nothing else.
pub fn from_bytes_parts(
    bytes: &[u8],
    parts: &mut [(&str, &mut dyn Module)],
) -> Result<HashMap<String, String>> {
    let here = Path::new("<memory>");
    let st = parse(bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| ck(here, e.to_string()))?;
    // Check everything before changing anything.
    let mut wanted: Vec<(String, Vec<usize>)> = Vec::new();
    for (prefix, module) in parts.iter() {
        module.visit(prefix, &mut |name, t| {
            wanted.push((name, t.shape().to_vec()))
        });
    }
    // Every problem is reported at once: a file from another version of a model is
    // usually wrong in many tensors, and one error per attempt hides the pattern.
    let mut problems: Vec<String> = Vec::new();
    let mut values: Vec<Vec<f32>> = Vec::with_capacity(wanted.len());
    let mut scales_read: Vec<String> = Vec::new();
    for (name, shape) in &wanted {
        let Ok(t) = st.tensor(name) else {
            problems.push(format!("tensor {name} is missing"));
            continue;
        };
        if !matches!(t.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::I8) {
            problems.push(format!(
                "tensor {name} is {:?}, expected F32, F16, BF16 or I8",
                t.dtype()
            ));
            continue;
        }
        if t.shape() != shape.as_slice() {
            problems.push(format!(
                "tensor {name} has shape {:?}, the model needs {shape:?}",
                t.shape()
            ));
            continue;
        }
        if t.dtype() == Dtype::I8 {
            // Known even when wrong, so the error about it is not repeated as an
            // unexpected tensor.
            scales_read.push(int8_scale_name(name));
        }
        let data = t.data();
        values.push(match t.dtype() {
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::I8 => match int8_values(&st, name, shape) {
                Ok(v) => v,
                Err(why) => {
                    problems.push(why);
                    continue;
                }
            },
            _ => le_f32s(data),
        });
    }
    let known: std::collections::HashSet<&str> = (wanted.iter().map(|(n, _)| n.as_str()))
        .chain(scales_read.iter().map(String::as_str))
        .collect();
    let mut extra: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !known.contains(n))
        .map(String::from)
        .collect();
    if !extra.is_empty() {
        extra.sort();
        problems.push(format!(
            "tensors the model does not have: {}",
            extra.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(ck(here, problems.join("; ")));
    }
    let mut k = 0;
    for (prefix, module) in parts.iter_mut() {
        module.visit_mut(prefix, &mut |_, mut t| {
            for (dst, &v) in t.iter_mut().zip(&values[k]) {
                *dst = v;
            }
            k += 1;
        });
    }
    Ok(header.metadata().clone().unwrap_or_default())
}

/// Little-endian f32 bytes as values.
fn le_f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The f32 values `s_r q_rk` of int8 tensor `name` `[rows, cols]` (`shape`, already
/// checked) with its scales, or why they cannot be had.
fn int8_values(
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> std::result::Result<Vec<f32>, String> {
    let scale_name = int8_scale_name(name);
    let ([rows, cols], true) = (shape, int8_candidate(name, shape)) else {
        return Err(format!(
            "tensor {name} is I8; only recurrent weight matrices (weight_ih*, weight_hh*) are stored in 8 bits"
        ));
    };
    let s = st
        .tensor(&scale_name)
        .map_err(|_| format!("tensor {name} is I8 but its scales {scale_name} are missing"))?;
    if s.dtype() != Dtype::F32 || s.shape() != [*rows] {
        return Err(format!(
            "scales {scale_name} are {:?} {:?}, expected F32 [{rows}]",
            s.dtype(),
            s.shape()
        ));
    }
    let scales = le_f32s(s.data());
    if let Some(bad) = scales.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
        return Err(format!(
            "scales {scale_name} hold {bad}; scales are finite and >= 0"
        ));
    }
    let q = st.tensor(name).map_err(|e| e.to_string())?;
    // -128 has no place in symmetric quantization: int8 decoding would take another
    // row maximum and make other integers.
    if q.data().contains(&0x80) {
        return Err(format!(
            "tensor {name} holds -128; int8 weights are in -127..=127"
        ));
    }
    Ok(q.data()
        .chunks_exact(*cols.max(&1))
        .zip(&scales)
        .flat_map(|(row, &s)| row.iter().map(move |&b| f32::from(b as i8) * s))
        .collect())
}

/// What a file's header says about its tensors, read in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    /// How many values the tensors hold in all (the safetensors reader has checked
    /// each against the bytes it occupies), in f64: no shape can overflow it.
    pub values: f64,
    /// The names of the 16-bit (F16 or BF16) tensors, sorted.
    pub half: Vec<String>,
    /// The names of the int8 tensors (without their scales), sorted.
    pub int8: Vec<String>,
}

/// The [`Contents`] of the file in memory, without converting any tensor.
pub fn contents(bytes: &[u8]) -> Result<Contents> {
    let st = parse(bytes)?;
    let mut half: Vec<String> = st
        .iter()
        .filter(|(_, t)| matches!(t.dtype(), Dtype::F16 | Dtype::BF16))
        .map(|(n, _)| n.to_string())
        .collect();
    half.sort();
    let mut int8: Vec<String> = st
        .iter()
        .filter(|(_, t)| t.dtype() == Dtype::I8)
        .map(|(n, _)| n.to_string())
        .collect();
    int8.sort();
    let values = st
        .iter()
        .map(|(_, t)| t.shape().iter().map(|&n| n as f64).product::<f64>())
        .sum();
    Ok(Contents { values, half, int8 })
}

impl Contents {
    /// [`Storage::Int8`] if any tensor is int8, else [`Storage::F16`] if any is stored
    /// in 16 bits (F16 or BF16: both are written back as F16), else [`Storage::F32`]:
    /// what writing the same model again should keep.
    pub fn storage(&self) -> Storage {
        if !self.int8.is_empty() {
            Storage::Int8
        } else if !self.half.is_empty() {
            Storage::F16
        } else {
            Storage::F32
        }
    }
}

/// [`Contents::storage`] of the file in memory.
pub fn stored_as(bytes: &[u8]) -> Result<Storage> {
    Ok(contents(bytes)?.storage())
}

/// The string metadata of a checkpoint in memory, without reading its tensors.
pub fn metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        ck(
            Path::new("<memory>"),
            format!("not a safetensors file: {e}"),
        )
    })?;
    Ok(header.metadata().clone().unwrap_or_default())
}
