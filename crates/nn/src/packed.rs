//! Weights packed for inference's one-vector products, in f32 or bfloat16.
//!
//! Decoding one utterance multiplies each recurrent weight matrix by a single vector
//! per step. Those products read every weight once and do one multiply-add with it, so
//! they run at the speed the weights stream from cache: the reference speller's 19 MB
//! of cell weights come from L3 at ~27 GB/s on the machine in BENCHMARKS.md. Two
//! things help:
//!
//! - **Layout.** [`PackedMatrix`] stores `W` `[N, K]` as panels of [`PANEL`] rows, each
//!   panel column-major (`panel[k][r]`), so a product walks memory once, front to back,
//!   keeping the panel's 128 outputs in eight 16-lane registers: no horizontal sums,
//!   and one stream for the prefetcher instead of eight.
//! - **bfloat16 storage** ([`WeightFormat::Bf16`]) halves the bytes. Each weight is
//!   rounded to the nearest bfloat16 (8 significant bits, relative error at most 2^-8)
//!   and widened back to f32 in registers; inputs, products and sums stay f32. This is
//!   the same trade as whisper.cpp's f16 weights, and a choice of the caller: f32 is
//!   the default and bit-for-bit what was trained.
//! - **int8 storage** ([`WeightFormat::Int8`]) quarters them: each row `r` of `W` is
//!   stored as integers `q` in [-127, 127] with one f32 scale `s_r = max |W_r| / 127`,
//!   and `y_r += s_r * sum_k q_rk x_k`, the sum in f32 over exactly converted
//!   integers (inputs stay f32: no activation quantization). Weights that stream from
//!   L3 (a reference-size speller step reads 19 MB in f32) come in at nearly twice
//!   bf16's rate (BENCHMARKS.md: 70 against 96 ms for 150 greedy steps); weights
//!   already in L2 gain nothing, since widening costs what it saves.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::error::{check_shape, Result};

/// Rows per panel: eight 16-lane f32 accumulators.
pub const PANEL: usize = 128;

/// How a [`PackedMatrix`] stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum WeightFormat {
    /// The trained f32 values, unchanged.
    #[default]
    F32,
    /// Rounded to bfloat16 (round to nearest, ties to even): half the memory traffic.
    Bf16,
    /// Symmetric 8-bit integers with one scale per row: a quarter of the traffic.
    Int8,
}

impl WeightFormat {
    /// Every format, for help texts and tests.
    pub const ALL: [WeightFormat; 3] = [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8];

    /// `w` `[N, K]` with the values this format stores (bfloat16 values, or each row's
    /// integers times its scale, as f32), so that products on other code paths
    /// compute with the same weights as a [`PackedMatrix`] of this format.
    pub fn stored(self, w: ArrayView2<f32>) -> Array2<f32> {
        match self {
            WeightFormat::F32 => w.to_owned(),
            WeightFormat::Bf16 => w.mapv(|v| from_bf16(to_bf16(v))),
            WeightFormat::Int8 => {
                let mut out = w.to_owned();
                for mut row in out.rows_mut() {
                    let scale = int8_scale(row.view());
                    row.mapv_inplace(|v| f32::from(quantize(v, scale)) * scale);
                }
                out
            }
        }
    }

    /// The name `FromStr` reads and `Display` writes (`f32`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        WeightFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown weight format `{s}` (expected f32, bf16 or int8)"))
    }
}

/// `f32` to bfloat16 bits, rounding to nearest with ties to even; NaN stays NaN.
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        // Keep it quiet and a NaN (truncation could clear every mantissa bit).
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// bfloat16 bits to `f32` (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// The int8 scale of one row: its largest magnitude maps to 127 (0 for a zero row).
/// Trained weights are finite (training stops on a NaN); an infinite one would give an
/// infinite scale and NaN products, a NaN one is skipped by the maximum.
fn int8_scale(row: ArrayView1<f32>) -> f32 {
    row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0
}

/// `v / scale` rounded to the nearest integer in [-127, 127] (0 when `scale` is 0).
fn quantize(v: f32, scale: f32) -> i8 {
    if scale > 0.0 {
        (v / scale).round().clamp(-127.0, 127.0) as i8
    } else {
        0
    }
}

/// Refuses a packing of another shape than the layer's `weight` `[N, K]`.
pub(crate) fn check_packed(layer: &str, w: &PackedMatrix, dim: (usize, usize)) -> Result<()> {
    check_shape(
        layer,
        "packed weight",
        &[w.rows, w.cols],
        &[Some(dim.0), Some(dim.1)],
    )
}

#[derive(Debug, Clone, PartialEq)]
enum Data {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// The integers, packed as the others, and one scale per (padded) row.
    Int8(Vec<i8>, Vec<f32>),
}

/// A weight matrix `W` `[N, K]` packed for `y += W x` on one vector at a time
/// ([`PackedMatrix::gemv_acc`]). Rows past `N` in the last panel are zero.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    data: Data,
}

impl PackedMatrix {
    /// Packs `w` `[N, K]` (any strides) in `format`.
    pub fn new(w: ArrayView2<f32>, format: WeightFormat) -> PackedMatrix {
        let (n, k) = w.dim();
        let mut packed = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
        for (j, row) in w.rows().into_iter().enumerate() {
            let (b, r) = (j / PANEL, j % PANEL);
            let panel = &mut packed[b * k * PANEL..(b + 1) * k * PANEL];
            for (p, &v) in row.iter().enumerate() {
                panel[p * PANEL + r] = v;
            }
        }
        let data = match format {
            WeightFormat::F32 => Data::F32(packed),
            WeightFormat::Bf16 => Data::Bf16(packed.into_iter().map(to_bf16).collect()),
            WeightFormat::Int8 => {
                let mut scales = vec![0f32; n.div_ceil(PANEL) * PANEL];
                for (s, row) in scales.iter_mut().zip(w.rows()) {
                    *s = int8_scale(row);
                }
                // Element `i` of a panel belongs to row `i % PANEL` of that panel.
                let q = packed
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let row = i / (k * PANEL) * PANEL + i % PANEL;
                        quantize(v, scales[row])
                    })
                    .collect();
                Data::Int8(q, scales)
            }
        };
        PackedMatrix {
            rows: n,
            cols: k,
            data,
        }
    }

    /// `(N, K)`.
    pub fn dim(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            Data::F32(_) => WeightFormat::F32,
            Data::Bf16(_) => WeightFormat::Bf16,
            Data::Int8(..) => WeightFormat::Int8,
        }
    }

    /// Bytes of weights (padding and int8 scales included): what one product reads.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(d) => 4 * d.len(),
            Data::Bf16(d) => 2 * d.len(),
            Data::Int8(q, s) => q.len() + 4 * s.len(),
        }
    }

    /// `y += W x` for `x` `[K]`, `y` `[N]`.
    ///
    /// # Panics
    /// When `x` or `y` has the wrong length (a bug in lasr: layers check user-facing
    /// shapes first).
    pub fn gemv_acc(&self, y: &mut [f32], x: &[f32]) {
        assert!(
            y.len() == self.rows && x.len() == self.cols,
            "packed gemv: [{}, {}] x [{}] into [{}]",
            self.rows,
            self.cols,
            x.len(),
            y.len()
        );
        if self.rows == 0 || self.cols == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx512() {
            // SAFETY: the CPU has AVX-512F; the lengths were checked above and every
            // panel holds `cols * PANEL` weights.
            unsafe {
                match &self.data {
                    Data::F32(d) => f32_avx512(y, d, x),
                    Data::Bf16(d) => bf16_avx512(y, d, x),
                    Data::Int8(q, s) => int8_avx512(y, q, s, x),
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe {
                match &self.data {
                    Data::F32(d) => portable_avx2(y, d, None, x, |v| *v),
                    Data::Bf16(d) => portable_avx2(y, d, None, x, |h| from_bf16(*h)),
                    Data::Int8(q, s) => portable_avx2(y, q, Some(s), x, |v| f32::from(*v)),
                }
            }
            return;
        }
        match &self.data {
            Data::F32(d) => portable(y, d, None, x, |v| *v),
            Data::Bf16(d) => portable(y, d, None, x, |h| from_bf16(*h)),
            Data::Int8(q, s) => portable(y, q, Some(s), x, |v| f32::from(*v)),
        }
    }
}

/// [`portable`] compiled for AVX2 and FMA (most x86 CPUs without AVX-512), where the
/// loop vectorises and `mul_add` is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn portable_avx2<T>(
    y: &mut [f32],
    data: &[T],
    scales: Option<&[f32]>,
    x: &[f32],
    widen: impl Fn(&T) -> f32,
) {
    portable(y, data, scales, x, widen)
}

/// Any CPU: the same panel walk with plain arrays, each row's sum multiplied by its
/// scale when there are `scales` (int8). Built for the baseline target, `mul_add` is a
/// library call; [`portable_avx2`] is what AVX2 machines run.
#[inline(always)]
fn portable<T>(
    y: &mut [f32],
    data: &[T],
    scales: Option<&[f32]>,
    x: &[f32],
    widen: impl Fn(&T) -> f32,
) {
    let k = x.len();
    for (b, panel) in data.chunks_exact(k * PANEL).enumerate() {
        let mut acc = [0f32; PANEL];
        for (col, &xp) in panel.chunks_exact(PANEL).zip(x) {
            for (a, w) in acc.iter_mut().zip(col) {
                *a = widen(w).mul_add(xp, *a);
            }
        }
        if let Some(s) = scales {
            for (a, s) in acc.iter_mut().zip(&s[b * PANEL..]) {
                *a *= s;
            }
        }
        let out = &mut y[b * PANEL..];
        for (o, a) in out.iter_mut().zip(acc) {
            *o += a;
        }
    }
}

/// Adds the eight accumulators into the panel's rows of `y` that exist.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_panel(y: &mut [f32], b: usize, acc: &[std::arch::x86_64::__m512; 8]) {
    use std::arch::x86_64::*;
    let live = (y.len() - b * PANEL).min(PANEL);
    for (a, v) in acc.iter().enumerate() {
        let lo = 16 * a;
        if lo >= live {
            break;
        }
        let n = (live - lo).min(16);
        let mask: __mmask16 = if n == 16 { 0xffff } else { (1 << n) - 1 };
        // SAFETY: masked lanes lie within `y` (rows below `live`).
        let p = y.as_mut_ptr().add(b * PANEL + lo);
        let old = _mm512_maskz_loadu_ps(mask, p);
        _mm512_mask_storeu_ps(p, mask, _mm512_add_ps(old, *v));
    }
}

/// The panel walk shared by the AVX-512 kernels: eight 16-lane accumulators per panel,
/// `load` turning 16 stored weights at a pointer into f32 lanes.
///
/// # Safety
/// The CPU has AVX-512F; `data` holds whole panels of `x.len() * PANEL` weights and `y`
/// has at most as many rows as those panels.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn panel_walk<T>(
    y: &mut [f32],
    data: &[T],
    scales: Option<&[f32]>,
    x: &[f32],
    load: impl Fn(*const T) -> std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    let k = x.len();
    for (b, panel) in data.chunks_exact(k * PANEL).enumerate() {
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut w = panel.as_ptr();
        for &xp in x {
            let xb = _mm512_set1_ps(xp);
            for (a, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `w` walks the panel's `k * PANEL` weights, PANEL per column.
                *acc = _mm512_fmadd_ps(load(w.add(16 * a)), xb, *acc);
            }
            w = w.add(PANEL);
        }
        if let Some(s) = scales {
            for (a, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `scales` holds PANEL entries per panel (padded rows too).
                let sv = _mm512_loadu_ps(s.as_ptr().add(b * PANEL + 16 * a));
                *acc = _mm512_mul_ps(*acc, sv);
            }
        }
        store_panel(y, b, &acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn f32_avx512(y: &mut [f32], data: &[f32], x: &[f32]) {
    use std::arch::x86_64::*;
    // SAFETY: 16 f32 values from a pointer `panel_walk` keeps inside the panel.
    panel_walk(y, data, None, x, |w| unsafe { _mm512_loadu_ps(w) })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bf16_avx512(y: &mut [f32], data: &[u16], x: &[f32]) {
    use std::arch::x86_64::*;
    panel_walk(y, data, None, x, |w| {
        // SAFETY: 16 bfloat16 values (32 bytes) inside the panel, as above.
        let h = unsafe { _mm256_loadu_si256(w as *const __m256i) };
        // bfloat16 is the top half of an f32: widen and shift into place.
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn int8_avx512(y: &mut [f32], data: &[i8], scales: &[f32], x: &[f32]) {
    use std::arch::x86_64::*;
    panel_walk(y, data, Some(scales), x, |w| {
        // SAFETY: 16 int8 values (16 bytes) inside the panel, as above.
        let q = unsafe { _mm_loadu_si128(w as *const __m128i) };
        // Sign-extend to 32 bits and convert: exact for every integer in range.
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn want(w: &Array2<f32>, x: &[f32], y0: &[f32]) -> Vec<f64> {
        w.rows()
            .into_iter()
            .zip(y0)
            .map(|(row, &y)| {
                f64::from(y)
                    + row
                        .iter()
                        .zip(x)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
            })
            .collect()
    }

    /// The portable loop (or its AVX2 build) on `p`'s data.
    fn run_portable(p: &PackedMatrix, y: &mut [f32], x: &[f32], avx2: bool) {
        macro_rules! go {
            ($f:ident) => {
                match &p.data {
                    Data::F32(d) => $f(y, d, None, x, |v| *v),
                    Data::Bf16(d) => $f(y, d, None, x, |h| from_bf16(*h)),
                    Data::Int8(q, s) => $f(y, q, Some(s), x, |v| f32::from(*v)),
                }
            };
        }
        if avx2 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: callers check that the CPU has AVX2 and FMA.
            unsafe {
                go!(portable_avx2)
            }
        } else {
            go!(portable)
        }
    }

    #[test]
    fn packed_products_match_f64_for_any_shape_and_format() {
        // No columns: nothing to add (and no panic).
        let empty = PackedMatrix::new(Array2::<f32>::zeros((3, 0)).view(), WeightFormat::Bf16);
        let mut y = vec![1.0; 3];
        empty.gemv_acc(&mut y, &[]);
        assert_eq!(y, [1.0; 3]);
        for (n, k) in [
            (1, 1),
            (3, 5),
            (17, 33),
            (128, 16),
            (129, 7),
            (640, 160),
            (1024, 256),
        ] {
            let w =
                Array2::from_shape_fn((n, k), |(i, j)| ((i * 31 + j * 17) % 23) as f32 * 0.1 - 1.1);
            // A transposed view packs like the same matrix stored row-major.
            let wt = w.t().to_owned();
            let x: Vec<f32> = (0..k).map(|i| ((i * 7) % 13) as f32 * 0.2 - 1.3).collect();
            let y0: Vec<f32> = (0..n).map(|i| i as f32).collect();
            for format in WeightFormat::ALL {
                let p = PackedMatrix::new(w.view(), format);
                assert_eq!(p, PackedMatrix::new(wt.t(), format));
                assert_eq!((p.dim(), p.format()), ((n, k), format));
                let mut y = y0.clone();
                p.gemv_acc(&mut y, &x);
                let exact = want(&format.stored(w.view()), &x, &y0);
                for (i, (&got, &e)) in y.iter().zip(&exact).enumerate() {
                    assert!(
                        (f64::from(got) - e).abs() < 1e-4 * (1.0 + e.abs()),
                        "{format} [{n}, {k}] row {i}: {got} vs {e}"
                    );
                }
                // The portable loop agrees with whatever kernel ran (the AVX-512 one on
                // machines that have it, such as the one CI runs on).
                let mut yp = y0.clone();
                run_portable(&p, &mut yp, &x, false);
                for (a, b) in y.iter().zip(&yp) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                        "{format}: {a} vs {b}"
                    );
                }
                // And so does its AVX2 build, which CPUs without AVX-512 run.
                #[cfg(target_arch = "x86_64")]
                if crate::simd::avx2_fma() {
                    let mut y2 = y0.clone();
                    run_portable(&p, &mut y2, &x, true);
                    assert_eq!(y2, yp, "{format}: the AVX2 build of the same loop");
                }
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_specials() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        // Just above halfway rounds up.
        assert_eq!(
            from_bf16(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20))),
            1.0 + 2f32.powi(-7)
        );
        // 1 + 3 * 2^-8 is halfway between odd 1 + 2^-7 and even 1 + 2^-6: up.
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        for v in [0.0, -0.0, 1.0, -2.5, f32::INFINITY, f32::NEG_INFINITY] {
            let r = from_bf16(to_bf16(v));
            assert!(
                r == v || (v - r).abs() <= v.abs() * 2f32.powi(-8),
                "{v} -> {r}"
            );
        }
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        // A NaN whose payload sits only in the low bits stays a NaN.
        assert!(from_bf16(to_bf16(f32::from_bits(0x7f80_0001))).is_nan());
        // Relative error at most 2^-8 (the unit roundoff of 8 significant bits) over a sweep of magnitudes.
        for i in 0..10_000 {
            let v = (i as f32 * 0.7311).sin() * 10f32.powi(i % 7 - 3);
            let r = from_bf16(to_bf16(v));
            assert!((v - r).abs() <= v.abs() * 2f32.powi(-8), "{v} -> {r}");
        }
    }

    #[test]
    fn formats_parse_and_print() {
        for f in WeightFormat::ALL {
            assert_eq!(f.to_string().parse::<WeightFormat>(), Ok(f));
        }
        assert!("f16".parse::<WeightFormat>().unwrap_err().contains("f16"));
        let w = Array2::<f32>::ones((130, 3));
        assert_eq!(
            PackedMatrix::new(w.view(), WeightFormat::F32).bytes(),
            2 * 128 * 3 * 4
        );
        assert_eq!(
            PackedMatrix::new(w.view(), WeightFormat::Bf16).bytes(),
            2 * 128 * 3 * 2
        );
        assert_eq!(
            PackedMatrix::new(w.view(), WeightFormat::Int8).bytes(),
            2 * 128 * 3 + 4 * 2 * 128
        );
    }

    #[test]
    fn int8_rows_keep_their_largest_weight_and_err_by_at_most_half_a_step() {
        let mut w = Array2::from_shape_fn((5, 40), |(i, j)| {
            ((i * 40 + j) as f32 * 0.37).sin() * 10f32.powi(i as i32 - 2)
        });
        w.row_mut(3).fill(0.0);
        let q = WeightFormat::Int8.stored(w.view());
        for (r, (row, qrow)) in w.rows().into_iter().zip(q.rows()).enumerate() {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = max / 127.0;
            for (&v, &s) in row.iter().zip(qrow) {
                // Half a step, plus f32 rounding of the division and the product.
                assert!(
                    (v - s).abs() <= 0.5 * step * (1.0 + 1e-5),
                    "row {r}: {v} -> {s}"
                );
                if v.abs() == max {
                    assert!((s.abs() - max).abs() <= max * 1e-6, "row {r}: the largest");
                }
            }
            if r == 3 {
                assert!(qrow.iter().all(|&s| s == 0.0));
            }
        }
        // Scales are per row: a row of tiny weights keeps its precision beside a row
        // of large ones (a per-matrix scale would round it to zero).
        assert!(q.row(0).iter().any(|&v| v != 0.0));
        // Rows of many panels with scales a thousandfold apart: a kernel that read
        // another row's (or another panel's) scale would be off by orders of magnitude.
        let (n, k) = (300, 37);
        let wide = Array2::from_shape_fn((n, k), |(i, j)| {
            ((i * k + j) as f32 * 0.61).sin() * (1.0 + i as f32) * 10f32.powi(i as i32 % 4 - 2)
        });
        let stored = WeightFormat::Int8.stored(wide.view());
        let pw = PackedMatrix::new(wide.view(), WeightFormat::Int8);
        let xw: Vec<f32> = (0..k).map(|i| (i as f32 * 0.23).cos()).collect();
        let exact = want(&stored, &xw, &vec![0.0; n]);
        for avx in [None, Some(false), Some(true)] {
            let mut y = vec![0f32; n];
            match avx {
                None => pw.gemv_acc(&mut y, &xw),
                Some(a) => {
                    if a && !crate::simd::avx2_fma() {
                        continue;
                    }
                    run_portable(&pw, &mut y, &xw, a);
                }
            }
            for (i, (&got, &e)) in y.iter().zip(&exact).enumerate() {
                assert!(
                    (f64::from(got) - e).abs() < 1e-4 * (1e-3 + e.abs()),
                    "{avx:?} row {i}: {got} vs {e}"
                );
            }
        }
        // Packing quantises exactly as `stored` does.
        let p = PackedMatrix::new(w.view(), WeightFormat::Int8);
        let x: Vec<f32> = (0..40).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut y = vec![0f32; 5];
        p.gemv_acc(&mut y, &x);
        for (got, e) in y.iter().zip(want(&q, &x, &[0.0; 5])) {
            assert!(
                (f64::from(*got) - e).abs() < 1e-5 * (1.0 + e.abs()),
                "{got} vs {e}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "packed gemv")]
    fn wrong_lengths_panic_with_the_shapes() {
        let p = PackedMatrix::new(Array2::<f32>::ones((3, 4)).view(), WeightFormat::F32);
        p.gemv_acc(&mut [0.0; 3], &[1.0; 5]);
    }
}
