//! The one error type of `lasr-nn`.

/// What can go wrong in a layer call. Shape errors are programming errors in the
/// caller; they name the tensor so the mistake is found without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor handed to a layer has the wrong shape.
    #[error("{layer}: {tensor} has shape {got:?}, expected {expected}")]
    Shape {
        layer: String,
        tensor: &'static str,
        got: Vec<usize>,
        expected: String,
    },
    /// Sequence lengths do not fit the batch.
    #[error("{layer}: {reason}")]
    Lengths { layer: String, reason: String },
    /// A gradient or parameter became NaN or infinite: training must stop.
    #[error("non-finite value in {tensor}: training diverged")]
    NonFinite { tensor: String },
    /// A checkpoint file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is not a valid checkpoint for this model.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks `got == expected` with `None` as a wildcard.
pub(crate) fn check_shape(
    layer: &str,
    tensor: &'static str,
    got: &[usize],
    expected: &[Option<usize>],
) -> Result<()> {
    let ok = got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|(g, e)| e.is_none_or(|e| e == *g));
    if ok {
        return Ok(());
    }
    let expected = expected
        .iter()
        .map(|e| e.map_or("_".to_string(), |v| v.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::Shape {
        layer: layer.to_string(),
        tensor,
        got: got.to_vec(),
        expected: format!("[{expected}]"),
    })
}
