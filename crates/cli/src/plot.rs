//! Feature matrices as PNG heat maps, for looking at rather than reading.

use std::path::Path;

use anyhow::{Context, Result};
use ndarray::ArrayView2;

/// Viridis control points; intermediate colours are interpolated linearly.
const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

fn colour(v: f32) -> [u8; 3] {
    let x = v.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f32;
    let i = (x as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f32;
    let mut c = [0u8; 3];
    for (k, out) in c.iter_mut().enumerate() {
        *out = (VIRIDIS[i][k] * (1.0 - f) + VIRIDIS[i + 1][k] * f).round() as u8;
    }
    c
}

/// Writes `feats` `[T, D]` as a PNG: time left to right, low bins at the bottom, each
/// cell `scale` pixels square, colours spanning the 1st to 99th percentile so a few
/// floor values do not wash the picture out.
pub fn write_heatmap(feats: ArrayView2<f32>, path: &Path, scale: usize) -> Result<()> {
    let (frames, dim) = feats.dim();
    let mut finite: Vec<f32> = feats.iter().copied().filter(|v| v.is_finite()).collect();
    anyhow::ensure!(!finite.is_empty(), "nothing finite to plot");
    finite.sort_by(f32::total_cmp);
    let lo = finite[finite.len() / 100];
    let hi = finite[finite.len() - 1 - finite.len() / 100];
    let span = (hi - lo).max(1e-6);
    let (width, height) = (frames * scale, dim * scale);
    let mut rgb = vec![0u8; width * height * 3];
    for y in 0..height {
        let d = dim - 1 - y / scale;
        for x in 0..width {
            let v = feats[(x / scale, d)];
            let c = if v.is_finite() {
                colour((v - lo) / span)
            } else {
                [255, 0, 0]
            };
            rgb[(y * width + x) * 3..][..3].copy_from_slice(&c);
        }
    }
    let file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc
        .write_header()
        .with_context(|| format!("{}: cannot write PNG", path.display()))?;
    w.write_image_data(&rgb)
        .with_context(|| format!("{}: cannot write PNG", path.display()))?;
    w.finish()
        .with_context(|| format!("{}: cannot write PNG", path.display()))?;
    Ok(())
}
