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

/// One line of a chart: legend name, colour, `(step, value)` points.
type Series<'a> = (&'a str, &'a str, &'a [(f64, f64)]);

/// A training log (`log.jsonl` from `lasr train`) as an SVG with two panels: training
/// loss per logged step with validation loss per epoch, and validation CER/WER per
/// epoch. Hand-written SVG: no font or plotting library needed, any browser shows it.
pub fn write_training_curves(log: &str, path: &Path) -> Result<()> {
    let mut train: Vec<(f64, f64)> = Vec::new();
    let mut valid_loss: Vec<(f64, f64)> = Vec::new();
    let mut cer: Vec<(f64, f64)> = Vec::new();
    let mut wer: Vec<(f64, f64)> = Vec::new();
    for (n, line) in log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(valid) = v.get("valid") {
            if let Some(l) = valid["loss"].as_f64() {
                valid_loss.push((step, l));
            }
            if let Some(c) = valid["cer"].as_f64().filter(|c| c.is_finite()) {
                cer.push((step, 100.0 * c));
            }
            if let Some(w) = valid["wer"].as_f64().filter(|w| w.is_finite()) {
                wer.push((step, 100.0 * w));
            }
        }
    }
    anyhow::ensure!(!train.is_empty(), "the log has no training steps");
    let max_step = train
        .iter()
        .chain(&valid_loss)
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let mut svg = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"620\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"900\" height=\"620\" fill=\"white\"/>\n",
    );
    let panel = |svg: &mut String,
                 top: f64,
                 title: &str,
                 series: &[Series<'_>],
                 ymin: f64,
                 ymax: f64| {
        let (left, width, height) = (70.0, 800.0, 220.0);
        let x = |s: f64| left + width * s / max_step;
        let y = |v: f64| top + height - height * (v - ymin) / (ymax - ymin).max(1e-9);
        svg.push_str(&format!(
            "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{title}</text>\n<rect x=\"{left}\" y=\"{top}\" width=\"{width}\" height=\"{height}\" fill=\"none\" stroke=\"#888\"/>\n",
            top - 8.0
        ));
        for k in 0..=4 {
            let v = ymin + (ymax - ymin) * k as f64 / 4.0;
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\n",
                left - 6.0,
                y(v) + 4.0,
                left + width,
                y(v),
                y(v)
            ));
            let s = max_step * k as f64 / 4.0;
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{s:.0}</text>\n",
                x(s),
                top + height + 16.0
            ));
        }
        for (i, (name, colour, points)) in series.iter().enumerate() {
            if points.is_empty() {
                continue;
            }
            let d: Vec<String> = points
                .iter()
                .map(|&(s, v)| format!("{:.1},{:.1}", x(s), y(v.clamp(ymin, ymax))))
                .collect();
            svg.push_str(&format!("<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\n", d.join(" ")));
            let lx = left + width - 170.0;
            let ly = top + 18.0 + 16.0 * i as f64;
            svg.push_str(&format!(
                "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
                lx + 20.0,
                lx + 26.0,
                ly + 4.0
            ));
        }
    };
    let losses = train.iter().chain(&valid_loss).map(|p| p.1);
    let hi = losses.fold(f64::NEG_INFINITY, f64::max);
    panel(
        &mut svg,
        40.0,
        "loss per output symbol (nats) by step",
        &[
            ("train", "#1f77b4", &train),
            ("validation", "#d62728", &valid_loss),
        ],
        0.0,
        hi,
    );
    let top_rate = cer
        .iter()
        .chain(&wer)
        .map(|p| p.1)
        .fold(10.0, f64::max)
        .min(150.0);
    panel(
        &mut svg,
        360.0,
        "validation error rate (%) by step",
        &[("CER", "#2ca02c", &cer), ("WER", "#9467bd", &wer)],
        0.0,
        top_rate,
    );
    svg.push_str("</svg>\n");
    std::fs::write(path, svg).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
