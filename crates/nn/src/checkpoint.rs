//! Checkpoints as safetensors files: every parameter under its PyTorch-style name, as
//! little-endian f32, with string metadata (config, vocabulary, version...) in the
//! header. Any safetensors reader opens them (`safetensors.torch.load_file` gives a
//! PyTorch state dict).
//!
//! Writes go to a temporary file in the same directory, are synced, then renamed over
//! the target, so a crash or Ctrl-C mid-write leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::module::Module;

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
/// moments `m.` and `v.`).
pub fn to_bytes_parts(
    parts: &[(&str, &dyn Module)],
    metadata: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (prefix, module) in parts {
        module.visit(prefix, &mut |name, t| {
            let bytes = t.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((name, t.shape().to_vec(), bytes));
        });
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("byte length matches shape by construction");
            (name.clone(), view)
        })
        .collect();
    let meta = if metadata.is_empty() {
        None
    } else {
        Some(metadata.clone())
    };
    safetensors::serialize(views, meta).map_err(|e| ck(Path::new("<memory>"), e.to_string()))
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
/// (names, shapes, f32); returns the file's metadata. Errors name the file and the
/// tensor at fault. `module` is only changed when the whole file fits.
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

/// Reads a file written by [`to_bytes_parts`] into the same parts. Strict: every
/// tensor of every part must be there with its shape, and nothing else.
pub fn from_bytes_parts(
    bytes: &[u8],
    parts: &mut [(&str, &mut dyn Module)],
) -> Result<HashMap<String, String>> {
    let here = Path::new("<memory>");
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| ck(here, format!("not a safetensors file: {e}")))?;
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
    for (name, shape) in &wanted {
        let Ok(t) = st.tensor(name) else {
            problems.push(format!("tensor {name} is missing"));
            continue;
        };
        if t.dtype() != Dtype::F32 {
            problems.push(format!("tensor {name} is {:?}, expected F32", t.dtype()));
            continue;
        }
        if t.shape() != shape.as_slice() {
            problems.push(format!(
                "tensor {name} has shape {:?}, the model needs {shape:?}",
                t.shape()
            ));
            continue;
        }
        values.push(
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        );
    }
    let known: std::collections::HashSet<&str> = wanted.iter().map(|(n, _)| n.as_str()).collect();
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
