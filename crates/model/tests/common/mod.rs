//! Helpers shared by the model crate's test files.

/// `bytes` (a safetensors file) with metadata `key` set to the string `value`: the
/// header rewritten, the tensor data as it was (its offsets are relative to it).
pub fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"][key] = serde_json::Value::String(value.into());
    let mut h = serde_json::to_vec(&header).unwrap();
    // safetensors pads the header with spaces to a multiple of 8.
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    out
}
