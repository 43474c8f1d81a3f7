//! Weights packed for inference's products (one vector per step, or a few rows at
//! once), in f32, bfloat16 or int8.
//!
//! Decoding one utterance multiplies each recurrent weight matrix by a single vector
//! per step. Those products read every weight once and do one multiply-add with it, so
//! they run at the speed the weights stream from cache: the reference speller's 19 MB
//! of cell weights come from L3 at ~27 GB/s on the machine in BENCHMARKS.md. Two
//! things help:
//!
//! - **Layout.** [`PackedMatrix`] stores `W` `[N, K]` as panels of [`PANEL`] rows, each
//!   panel column-major (`panel[k][r]`; int8 keeps four columns of a row together,
//!   `panel[k / 4][r][k % 4]`), so a product walks memory once, front to back,
//!   keeping the panel's 128 outputs in eight 16-lane registers: no horizontal sums,
//!   and one stream for the prefetcher instead of eight.
//! - **bfloat16 storage** ([`WeightFormat::Bf16`]) halves the bytes. Each weight is
//!   rounded to the nearest bfloat16 (8 significant bits, relative error at most 2^-8)
//!   and widened back to f32 in registers; inputs, products and sums stay f32. This is
//!   the same trade as whisper.cpp's f16 weights, and a choice of the caller: f32 is
//!   the default and bit-for-bit what was trained.
//! - **int8** ([`WeightFormat::Int8`]) quarters them and multiplies in integers, as
//!   PyTorch's dynamically quantized LSTM and CTranslate2's int8 do: each row `r` of
//!   `W` is stored as integers `q` in [-127, 127] with one f32 scale
//!   `s_r = max |W_r| / 127`; each input vector is quantized at the product with its
//!   own scale `s_x = max |x| / 127`, and `y_r += s_r s_x sum_k q_rk x_k` with the sum
//!   exact in 32-bit integers (AVX-512 VNNI's `vpdpbusd` where the CPU has it, AVX2's
//!   `vpmaddwd` or a plain loop elsewhere: all give the same bits). Exact for `K` up
//!   to 66,000 columns (`255 * 127 * K` within an i32; [`PackedMatrix::new`] refuses
//!   more). The speller's weights that stream from L3 come in at a quarter of f32's
//!   bytes, and the listener's, resident in L2, take a quarter of the instructions of
//!   widening loads. Products over many inputs
//!   ([`PackedMatrix::gemm_acc`]: a layer's input projections over all frames, a
//!   beam's rows) reuse each weight for six inputs at a time. Per-vector scales suit
//!   inputs of one magnitude, such as hidden states (within [-1, 1]); BENCHMARKS.md
//!   has the accuracy of decoding this way.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2};

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
    /// Symmetric 8-bit integers with one scale per row, multiplied with inputs
    /// quantized per vector: a quarter of the traffic, integer arithmetic.
    Int8,
}

impl WeightFormat {
    /// Every format, for help texts and tests.
    pub const ALL: [WeightFormat; 3] = [WeightFormat::F32, WeightFormat::Bf16, WeightFormat::Int8];

    /// `w` `[N, K]` with the values this format stores (bfloat16 values, or each row's
    /// integers times its scale, as f32), so that products on other code paths
    /// compute with the same weights as a [`PackedMatrix`] of this format (int8
    /// products also round their inputs, which these weights alone do not).
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

    /// The name `FromStr` reads and `Display` writes (`f32`, `bf16`, `int8`).
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
pub(crate) fn int8_scale(row: ArrayView1<f32>) -> f32 {
    row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0
}

/// `v / scale` rounded to the nearest integer in [-127, 127] (0 when `scale` is 0).
pub(crate) fn quantize(v: f32, scale: f32) -> i8 {
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

/// `w` `[N, K]` into panels of [`PANEL`] rows, each column-major (`panel[k][r]`), into
/// `packed` (zeroed, whole panels). Training packs its speller's weights on every step,
/// both `W` (rows of `w` contiguous: transposed in tiles that stay in L1) and `W^T`
/// (columns of `w` contiguous: each panel column is one copied run), so both run at
/// memory speed; other strides take the element-by-element walk.
fn pack_f32(w: ArrayView2<f32>, packed: &mut [f32]) {
    const TILE: usize = 32;
    let (n, k) = w.dim();
    let (rs, cs) = (w.strides()[0], w.strides()[1]);
    let base = w.as_ptr();
    if n == 0 || k == 0 {
        return;
    }
    if cs == 1 && rs >= k as isize {
        for j0 in (0..n).step_by(TILE) {
            for p0 in (0..k).step_by(TILE) {
                for j in j0..(j0 + TILE).min(n) {
                    // SAFETY: row `j < n` of `w` holds `k` contiguous floats at `j * rs`.
                    let row =
                        unsafe { std::slice::from_raw_parts(base.offset(j as isize * rs), k) };
                    let (b, r) = (j / PANEL, j % PANEL);
                    let panel = &mut packed[b * k * PANEL..(b + 1) * k * PANEL];
                    for (p, &v) in row.iter().enumerate().take((p0 + TILE).min(k)).skip(p0) {
                        panel[p * PANEL + r] = v;
                    }
                }
            }
        }
    } else if rs == 1 && cs >= n as isize {
        for p in 0..k {
            // SAFETY: column `p < k` of `w` holds `n` contiguous floats at `p * cs`.
            let col = unsafe { std::slice::from_raw_parts(base.offset(p as isize * cs), n) };
            for (b, run) in col.chunks(PANEL).enumerate() {
                let at = b * k * PANEL + p * PANEL;
                packed[at..at + run.len()].copy_from_slice(run);
            }
        }
    } else {
        for (j, row) in w.rows().into_iter().enumerate() {
            let (b, r) = (j / PANEL, j % PANEL);
            let panel = &mut packed[b * k * PANEL..(b + 1) * k * PANEL];
            for (p, &v) in row.iter().enumerate() {
                panel[p * PANEL + r] = v;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Data {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// The integers in groups of [`GROUP`] columns (`panel[g][r][j]` holds column
    /// `GROUP g + j` of the panel's row `r`; columns past `K` are zero), one scale per
    /// (padded) row, and each row's integer sum (to undo the inputs' offset).
    Int8 {
        q: Vec<i8>,
        scales: Vec<f32>,
        sums: Vec<i32>,
    },
}

/// A weight matrix `W` `[N, K]` packed for `y += W x`, one vector at a time
/// ([`PackedMatrix::gemv_acc`]) or a few rows at once ([`PackedMatrix::gemm_acc`]).
/// Rows past `N` in the last panel are zero.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    data: Data,
}

impl PackedMatrix {
    /// Packs `w` `[N, K]` (any strides) in `format`.
    ///
    /// # Panics
    /// In int8, when `K` is over 66,000 (the integer sums could overflow).
    pub fn new(w: ArrayView2<f32>, format: WeightFormat) -> PackedMatrix {
        let (n, k) = w.dim();
        let column_major = || {
            let mut packed = vec![0f32; n.div_ceil(PANEL) * k * PANEL];
            pack_f32(w, &mut packed);
            packed
        };
        let data = match format {
            WeightFormat::F32 => Data::F32(column_major()),
            WeightFormat::Bf16 => Data::Bf16(column_major().into_iter().map(to_bf16).collect()),
            WeightFormat::Int8 => {
                let kp = k.div_ceil(GROUP) * GROUP;
                // Integer sums of up to `kp` products of at most 255 * 127 stay exact.
                assert!(
                    kp <= i32::MAX as usize / (255 * 127),
                    "int8 packing: {k} columns would overflow the 32-bit sums"
                );
                let mut q = vec![0i8; n.div_ceil(PANEL) * kp * PANEL];
                let mut scales = vec![0f32; n.div_ceil(PANEL) * PANEL];
                let mut sums = vec![0i32; scales.len()];
                for (j, row) in w.rows().into_iter().enumerate() {
                    let (b, r) = (j / PANEL, j % PANEL);
                    scales[j] = int8_scale(row);
                    let panel = &mut q[b * kp * PANEL..(b + 1) * kp * PANEL];
                    for (p, &v) in row.iter().enumerate() {
                        let v = quantize(v, scales[j]);
                        panel[(p / GROUP) * GROUP * PANEL + r * GROUP + p % GROUP] = v;
                        sums[j] += i32::from(v);
                    }
                }
                Data::Int8 { q, scales, sums }
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

    /// Panels of [`PANEL`] outputs.
    pub(crate) fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// The weights, when stored in f32.
    pub(crate) fn f32_data(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(d) => Some(d),
            _ => None,
        }
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        match self.data {
            Data::F32(_) => WeightFormat::F32,
            Data::Bf16(_) => WeightFormat::Bf16,
            Data::Int8 { .. } => WeightFormat::Int8,
        }
    }

    /// Bytes of weights (padding and int8 scales included): what one product reads.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(d) => 4 * d.len(),
            Data::Bf16(d) => 2 * d.len(),
            Data::Int8 { q, scales, sums } => q.len() + 4 * (scales.len() + sums.len()),
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
        if let Data::Int8 { .. } = self.data {
            return self.int8_products(y, x, 1);
        }
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx512() {
            // SAFETY: the CPU has AVX-512F; the lengths were checked above and every
            // panel holds `cols * PANEL` weights.
            unsafe {
                match &self.data {
                    Data::F32(d) => f32_avx512(y, d, x),
                    Data::Bf16(d) => bf16_avx512(y, d, x),
                    Data::Int8 { .. } => unreachable!("int8 returned above"),
                }
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe {
                match &self.data {
                    Data::F32(d) => portable_avx2(y, d, x, |v| *v),
                    Data::Bf16(d) => portable_avx2(y, d, x, |h| from_bf16(*h)),
                    Data::Int8 { .. } => unreachable!("int8 returned above"),
                }
            }
            return;
        }
        match &self.data {
            Data::F32(d) => portable(y, d, x, |v| *v),
            Data::Bf16(d) => portable(y, d, x, |h| from_bf16(*h)),
            Data::Int8 { .. } => unreachable!("int8 returned above"),
        }
    }

    /// `y[m] += W x[m]` for every row `m` of `x` `[M, K]` and `y` `[M, N]` (a layer's
    /// input projections over all frames, a beam's rows, or a training batch's rows
    /// at one decoder step). Each row's result is what [`PackedMatrix::gemv_acc`] gives
    /// it alone, bit for bit. In int8 the rows share each weight read six at a time;
    /// in f32 on AVX-512 four at a time (training's per-step products: the speller's,
    /// whose weights stream from L3, 15-25% faster than gemm on a transposed copy on
    /// one core when measured with row blocks as the outer loop, and the recurrent
    /// layers', see `Recurrence`); otherwise the rows run one by one.
    ///
    /// # Panics
    /// When the shapes disagree (a bug in lasr: layers check user-facing shapes first).
    pub fn gemm_acc(&self, mut y: ArrayViewMut2<f32>, x: ArrayView2<f32>) {
        assert!(
            y.ncols() == self.rows && x.ncols() == self.cols && x.nrows() == y.nrows(),
            "packed gemm: [{}, {}] x {:?} into {:?}",
            self.rows,
            self.cols,
            x.shape(),
            y.shape()
        );
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        if let (Data::Int8 { .. }, Some(y)) = (&self.data, y.as_slice_mut()) {
            if self.rows > 0 && self.cols > 0 {
                self.int8_products(y, x, x.len() / self.cols);
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let (Data::F32(d), true, Some(y)) = (&self.data, crate::simd::avx512(), y.as_slice_mut())
        {
            if self.rows > 0 && self.cols > 0 {
                let rows = Rows {
                    x: x.as_ptr(),
                    y: y.as_mut_ptr(),
                    rows: x.len() / self.cols,
                };
                // SAFETY: the CPU has AVX-512F; `x` is `[M, K]` and `y` `[M, N]`, both
                // row-major (checked above), and `d` holds whole panels of `K` columns.
                unsafe { f32_rows_avx512(d, self.rows, self.cols, 0..self.panels(), &[rows]) };
            }
            return;
        }
        let mut row = vec![0f32; self.rows];
        for (mut yr, xr) in y
            .rows_mut()
            .into_iter()
            .zip(x.chunks_exact(self.cols.max(1)))
        {
            row.iter_mut().zip(&yr).for_each(|(r, &v)| *r = v);
            self.gemv_acc(&mut row, xr);
            yr.iter_mut().zip(&row).for_each(|(v, &r)| *v = r);
        }
    }

    /// The int8 products of `m` inputs `x` `[m, K]` into `y` `[m, N]`, both row-major.
    fn int8_products(&self, y: &mut [f32], x: &[f32], m: usize) {
        let Data::Int8 { q, scales, sums } = &self.data else {
            unreachable!("called on int8 data only")
        };
        let w = Int8Weights {
            q,
            scales,
            sums,
            n: self.rows,
            k: self.cols,
        };
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx512_vnni() {
            // SAFETY: the CPU has AVX-512F and VNNI.
            return unsafe { int8_products_vnni(&w, y, x, m) };
        }
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { int8_products_avx2(&w, y, x, m) };
        }
        int8_products(&w, y, x, m, int8_dots_portable)
    }
}

/// A recurrent layer's weights `W` `[N, K]` for the per-step products `y += W x`
/// (`x` `[B, K]`, `y` `[B, N]`, a few rows each). On AVX-512 CPUs they are packed
/// once per sequence for [`PackedMatrix::gemm_acc`]: the weights stay in L2 and each
/// is read once per four rows, where gemm repacked its operands at every step (about
/// 3% of the reference training step went to that packing). Elsewhere gemm runs on a
/// row-major copy of `W^T`, 3-4x faster than on a transposed view, which it would
/// repack at every step. The LSTM layer and the attention's query use it; the GRU's
/// forward was no faster with it (BENCHMARKS.md, "Training step").
#[derive(Debug, Clone)]
pub(crate) enum Recurrence {
    Packed(PackedMatrix),
    Gemm(Array2<f32>),
}

impl Recurrence {
    /// `w` for products of `rows` rows. Products as large as those [`matmul`] spreads
    /// over threads (`rows` 64 and up at the reference sizes) keep gemm: the packed
    /// walk runs on one thread.
    ///
    /// [`matmul`]: crate::linalg::matmul
    pub(crate) fn new(w: ArrayView2<f32>, rows: usize) -> Recurrence {
        let (n, k) = w.dim();
        if avx512_rows() && rows * n * k < crate::linalg::PARALLEL_WORK {
            Recurrence::Packed(PackedMatrix::new(w, WeightFormat::F32))
        } else {
            Recurrence::Gemm(crate::linalg::transpose(w))
        }
    }

    /// `(N, K)` of `W`.
    pub(crate) fn dim(&self) -> (usize, usize) {
        match self {
            Recurrence::Packed(w) => w.dim(),
            Recurrence::Gemm(w_t) => (w_t.ncols(), w_t.nrows()),
        }
    }

    /// `y += W x`.
    pub(crate) fn acc(&self, y: ArrayViewMut2<f32>, x: ArrayView2<f32>) {
        match self {
            Recurrence::Packed(w) => w.gemm_acc(y, x),
            Recurrence::Gemm(w_t) => crate::linalg::matmul(y, x, w_t.view(), true),
        }
    }
}

/// Whether [`PackedMatrix::gemm_acc`]'s f32 rows run on the AVX-512 kernel (elsewhere
/// they run one by one, slower than gemm for several rows).
pub(crate) fn avx512_rows() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Borrowed int8 data of a [`PackedMatrix`] `[n, k]`.
struct Int8Weights<'a> {
    q: &'a [i8],
    scales: &'a [f32],
    sums: &'a [i32],
    n: usize,
    k: usize,
}

/// [`int8_products`] with the VNNI kernels, and its quantization and scaling loops
/// vectorised for AVX-512 (the same IEEE operations, so the same bits as elsewhere).
///
/// # Safety
/// The CPU has AVX-512F and VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni,avx2,fma")]
unsafe fn int8_products_vnni(w: &Int8Weights, y: &mut [f32], x: &[f32], m: usize) {
    int8_products(w, y, x, m, |panel, xq, kp, acc| {
        // SAFETY: the CPU has AVX-512F and VNNI; `int8_products` passes whole panels
        // and `acc.len()` inputs of `kp` bytes.
        unsafe { vnni_block(panel, xq, kp, acc) }
    })
}

/// [`int8_products`] on AVX2 (16-bit multiply-adds, `vpmaddwd`), for CPUs without
/// VNNI: integer sums, so the same bits.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn int8_products_avx2(w: &Int8Weights, y: &mut [f32], x: &[f32], m: usize) {
    int8_products(w, y, x, m, |panel, xq, kp, acc| {
        for (a, x) in acc.iter_mut().zip(xq.chunks_exact(kp)) {
            // SAFETY: the CPU has AVX2; `int8_products` passes whole panels and
            // inputs of `kp` bytes.
            unsafe { avx2_dots(panel, x, kp, a) }
        }
    })
}

/// The integer sums of one panel with one input on AVX2, exactly as
/// [`int8_dots_portable`]: each group's 16 weights of four rows are widened to 16 bits
/// and `vpmaddwd` multiplies them with the input's four bytes (as two 16-bit pairs),
/// leaving two partial sums per row that the end adds.
///
/// # Safety
/// The CPU has AVX2; `panel` holds `kp * PANEL` weights and `x` `kp` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_dots(panel: &[i8], x: &[u8], kp: usize, acc: &mut [i32; PANEL]) {
    use std::arch::x86_64::*;
    const ROWS: usize = 32;
    for r0 in (0..PANEL).step_by(ROWS) {
        let mut sums = [_mm256_setzero_si256(); ROWS / 4];
        for g in 0..kp / GROUP {
            let xg = &x[g * GROUP..g * GROUP + GROUP];
            // Lanes alternate (x0, x1) and (x2, x3) as pairs of 16-bit integers.
            let lo = i32::from(xg[0]) | (i32::from(xg[1]) << 16);
            let hi = i32::from(xg[2]) | (i32::from(xg[3]) << 16);
            let xv = _mm256_setr_epi32(lo, hi, lo, hi, lo, hi, lo, hi);
            let w = panel.as_ptr().add(g * GROUP * PANEL + r0 * GROUP);
            for (i, s) in sums.iter_mut().enumerate() {
                // SAFETY: 16 bytes (four rows of four columns) inside this group.
                let wb = _mm_loadu_si128(w.add(16 * i) as *const __m128i);
                let w16 = _mm256_cvtepi8_epi16(wb);
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(w16, xv));
            }
        }
        for (i, s) in sums.iter().enumerate() {
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, *s);
            for (j, pair) in lanes.chunks_exact(2).enumerate() {
                acc[r0 + 4 * i + j] = pair[0] + pair[1];
            }
        }
    }
}

/// Quantizes every input, takes the integer sums with `dots` panel by panel (blocks of
/// [`INT8_BLOCK`] inputs, then single ones), and adds the scaled sums into `y`.
#[inline(always)]
fn int8_products(
    w: &Int8Weights,
    y: &mut [f32],
    x: &[f32],
    m: usize,
    dots: impl Fn(&[i8], &[u8], usize, &mut [[i32; PANEL]]),
) {
    let (n, k) = (w.n, w.k);
    let kp = k.div_ceil(GROUP) * GROUP;
    // Taken out and put back rather than borrowed in a closure: `LocalKey::with`'s
    // closure would be compiled without the caller's AVX-512 features.
    let (mut xq, mut sx) = INT8_INPUTS.take();
    xq.resize(m * kp, 0);
    sx.resize(m, 0.0);
    for ((xr, qr), s) in x
        .chunks_exact(k)
        .zip(xq.chunks_exact_mut(kp))
        .zip(sx.iter_mut())
    {
        *s = quantize_input(xr, qr);
    }
    let mut acc = [[0i32; PANEL]; INT8_BLOCK];
    for (b, panel) in w.q.chunks_exact(kp * PANEL).enumerate() {
        let live = (n - b * PANEL).min(PANEL);
        let rs = &w.scales[b * PANEL..][..live];
        let sum = &w.sums[b * PANEL..][..live];
        let mut row = 0;
        while row < m {
            let f = if m - row >= INT8_BLOCK { INT8_BLOCK } else { 1 };
            dots(panel, &xq[row * kp..(row + f) * kp], kp, &mut acc[..f]);
            for (i, acc) in acc[..f].iter().enumerate() {
                let out = &mut y[(row + i) * n + b * PANEL..][..live];
                let s_x = sx[row + i];
                for (((o, &a), &s), &sm) in out.iter_mut().zip(acc).zip(rs).zip(sum) {
                    // Undo the inputs' offset of 128, then both scales.
                    *o += (a - 128 * sm) as f32 * (s * s_x);
                }
            }
            row += f;
        }
    }
    // Kept for the next product unless a long input made it large: a thread should not
    // hold an hour of quantized audio.
    if xq.capacity() <= 1 << 22 {
        INT8_INPUTS.set((xq, sx));
    }
}

/// A recurrent layer's weights laid out for inference ([`crate::Lstm::pack`] and the
/// other layers'): `weight_hh` for the one-vector product of every step, and in int8
/// also `weight_ih` `[G, I]` for the input projections of all steps at once (f32 and
/// bf16 leave those to gemm on the trained weights, which is as fast as they go).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRecurrent {
    pub(crate) ih: Option<PackedMatrix>,
    pub(crate) hh: PackedMatrix,
}

impl PackedRecurrent {
    /// Packs a layer's `w_ih` `[G, I]` and `w_hh` `[G, H]` in `format`.
    pub fn new(w_ih: ArrayView2<f32>, w_hh: ArrayView2<f32>, format: WeightFormat) -> Self {
        PackedRecurrent {
            ih: (format == WeightFormat::Int8).then(|| PackedMatrix::new(w_ih, format)),
            hh: PackedMatrix::new(w_hh, format),
        }
    }

    /// The storage format.
    pub fn format(&self) -> WeightFormat {
        self.hh.format()
    }

    /// `gates` `[T, G]` += `x` `[T, I]` `W_ih^T`: on the packed `weight_ih` if there is
    /// one, else gemm on `w_ih` (the layer's trained weights).
    pub(crate) fn input_projection(
        &self,
        gates: ArrayViewMut2<f32>,
        x: ArrayView2<f32>,
        w_ih: ArrayView2<f32>,
    ) {
        match &self.ih {
            Some(p) => p.gemm_acc(gates, x),
            // gemm packs the transposed view itself.
            None => crate::linalg::matmul(gates, x, w_ih.t(), true),
        }
    }

    /// Refuses a packing of another shape than the layer's weights.
    pub(crate) fn check(
        &self,
        layer: &str,
        w_ih: (usize, usize),
        w_hh: (usize, usize),
    ) -> Result<()> {
        if let Some(ih) = &self.ih {
            check_packed(layer, ih, w_ih)?;
        }
        check_packed(layer, &self.hh, w_hh)
    }
}

/// Inputs an int8 product shares each weight read between ([`PackedMatrix::gemm_acc`]):
/// six inputs by 64 rows take 24 of the 32 vector registers.
const INT8_BLOCK: usize = 6;

/// Columns per int8 group: `vpdpbusd` multiplies four byte pairs per 32-bit lane.
const GROUP: usize = 4;

thread_local! {
    /// Quantized inputs and their scales, reused between products.
    static INT8_INPUTS: std::cell::Cell<(Vec<u8>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// Writes `x` into `out` as unsigned bytes `round(x / s) + 128`, `s = max |x| / 127`
/// (rounding half to even), padding `out` past `x` with 128 (zero), and returns `s`: 0
/// for a zero vector, NaN or infinite when `x` holds a NaN or infinity, so that the
/// products carry it.
#[inline(always)]
fn quantize_input(x: &[f32], out: &mut [u8]) -> f32 {
    // The largest |x| as the largest of the bit patterns with the sign cleared: they
    // order as the magnitudes do, and a NaN's lie above infinity's, so a NaN wins
    // (`f32::max` would drop it). An integer maximum also vectorises.
    let max = f32::from_bits(x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff)));
    let inv = 127.0 / max;
    if max == 0.0 || inv.is_infinite() {
        // A zero vector, or one so tiny (below 1e-36) that its steps would not be
        // representable: its products are zero.
        out.fill(128);
        return 0.0;
    }
    // Adding and taking away 1.5 * 2^23 rounds |t| < 2^22 to the nearest integer
    // (ties to even) in two plain additions: no `roundf` call on CPUs without SSE4.1,
    // and the same bits on every CPU.
    const MAGIC: f32 = 12_582_912.0;
    for (o, &v) in out.iter_mut().zip(x) {
        let t = ((v * inv).clamp(-127.0, 127.0) + MAGIC) - MAGIC;
        *o = (t as i32 + 128) as u8;
    }
    out[x.len()..].fill(128);
    max / 127.0
}

/// The integer sums of one panel of int8 weights (`kp` columns) with `acc.len()` (1 or
/// [`INT8_BLOCK`]) quantized inputs of `kp` bytes each, on AVX-512 VNNI.
///
/// # Safety
/// The CPU has AVX-512F and VNNI; `panel` holds `kp * PANEL` weights, `xq`
/// `acc.len() * kp` bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn vnni_block(panel: &[i8], xq: &[u8], kp: usize, acc: &mut [[i32; PANEL]]) {
    debug_assert_eq!(panel.len(), kp * PANEL);
    debug_assert_eq!(xq.len(), kp * acc.len());
    match acc.len() {
        1 => vnni_dots::<1, 8>(panel, xq, kp, acc, 0),
        INT8_BLOCK => {
            vnni_dots::<INT8_BLOCK, 4>(panel, xq, kp, acc, 0);
            vnni_dots::<INT8_BLOCK, 4>(panel, xq, kp, acc, PANEL / 2);
        }
        _ => unreachable!("blocks of 1 or INT8_BLOCK inputs"),
    }
}

/// Integer sums `acc[f][r] = sum_k q[r][k] xq[f][k]` (the unsigned inputs as stored)
/// for one panel of int8 weights (`kp` columns) and `acc.len()` inputs of `kp` bytes,
/// on any CPU: the same sums as [`vnni_block`], so the same bits.
#[inline(always)]
fn int8_dots_portable(panel: &[i8], xq: &[u8], kp: usize, acc: &mut [[i32; PANEL]]) {
    for (a, x) in acc.iter_mut().zip(xq.chunks_exact(kp)) {
        *a = [0; PANEL];
        for (group, xg) in panel.chunks_exact(GROUP * PANEL).zip(x.chunks_exact(GROUP)) {
            for (r, w) in group.chunks_exact(GROUP).enumerate() {
                a[r] += w
                    .iter()
                    .zip(xg)
                    .map(|(&w, &x)| i32::from(w) * i32::from(x))
                    .sum::<i32>();
            }
        }
    }
}

/// [`vnni_block`]'s kernel: `F` inputs over `16 A` rows of the panel from `row0`: `A` 16-lane
/// accumulators per input, one `vpdpbusd` per accumulator and group of four columns.
///
/// # Safety
/// The CPU has AVX-512F and VNNI; `panel` holds `kp / GROUP` groups of
/// `GROUP * PANEL` weights, `xq` `F` inputs of `kp` bytes, and `row0 + 16 A <= PANEL`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vnni_dots<const F: usize, const A: usize>(
    panel: &[i8],
    xq: &[u8],
    kp: usize,
    acc: &mut [[i32; PANEL]],
    row0: usize,
) {
    use std::arch::x86_64::*;
    let mut sums = [[_mm512_setzero_si512(); A]; F];
    for g in 0..kp / GROUP {
        // Computed per group, not stepped: a step after the last group could point
        // past the allocation, which `add` does not allow even unread.
        let w = panel.as_ptr().add(g * GROUP * PANEL + row0 * GROUP);
        let mut xb = [_mm512_setzero_si512(); F];
        for (f, xb) in xb.iter_mut().enumerate() {
            // SAFETY: four bytes of input `f` at group `g`, inside `xq`.
            let x4 = std::ptr::read_unaligned(xq.as_ptr().add(f * kp + g * GROUP) as *const i32);
            *xb = _mm512_set1_epi32(x4);
        }
        for a in 0..A {
            // SAFETY: 64 bytes (16 rows of four columns) inside this group.
            let wv = _mm512_loadu_si512(w.add(64 * a) as *const __m512i);
            for (s, &x) in sums.iter_mut().zip(&xb) {
                s[a] = _mm512_dpbusd_epi32(s[a], x, wv);
            }
        }
    }
    for (f, s) in sums.iter().enumerate() {
        for (a, v) in s.iter().enumerate() {
            // SAFETY: rows `row0 + 16 a ..+16` lie within the panel's PANEL rows.
            _mm512_storeu_si512(acc[f].as_mut_ptr().add(row0 + 16 * a) as *mut __m512i, *v);
        }
    }
}

/// [`portable`] compiled for AVX2 and FMA (most x86 CPUs without AVX-512), where the
/// loop vectorises and `mul_add` is one instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn portable_avx2<T>(y: &mut [f32], data: &[T], x: &[f32], widen: impl Fn(&T) -> f32) {
    portable(y, data, x, widen)
}

/// Any CPU: the same panel walk with plain arrays. Built for the baseline target,
/// `mul_add` is a library call; [`portable_avx2`] is what AVX2 machines run.
#[inline(always)]
fn portable<T>(y: &mut [f32], data: &[T], x: &[f32], widen: impl Fn(&T) -> f32) {
    let k = x.len();
    for (b, panel) in data.chunks_exact(k * PANEL).enumerate() {
        let mut acc = [0f32; PANEL];
        for (col, &xp) in panel.chunks_exact(PANEL).zip(x) {
            for (a, w) in acc.iter_mut().zip(col) {
                *a = widen(w).mul_add(xp, *a);
            }
        }
        let out = &mut y[b * PANEL..];
        for (o, a) in out.iter_mut().zip(acc) {
            *o += a;
        }
    }
}

/// Adds accumulators into `y` from position `lo` on, 16 lanes each, skipping lanes
/// past `y`'s end (a panel's missing rows).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_lanes(y: &mut [f32], lo: usize, acc: &[std::arch::x86_64::__m512]) {
    add_lanes_raw(y.as_mut_ptr(), y.len(), lo, acc)
}

/// [`add_lanes`] on a row of `len` floats at `y`.
///
/// # Safety
/// The CPU has AVX-512F; `y` points to `len` floats that nothing else reads or writes
/// from `lo` to `lo + 16 acc.len()` meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_lanes_raw(y: *mut f32, len: usize, lo: usize, acc: &[std::arch::x86_64::__m512]) {
    use std::arch::x86_64::*;
    for (a, v) in acc.iter().enumerate() {
        let at = lo + 16 * a;
        if at >= len {
            break;
        }
        let n = (len - at).min(16);
        let mask: __mmask16 = if n == 16 { 0xffff } else { (1 << n) - 1 };
        // SAFETY: masked lanes lie within the row.
        let p = y.add(at);
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
        add_lanes(y, b * PANEL, &acc);
    }
}

/// Rows of one product for [`f32_rows_avx512`]: `rows` inputs of `K` floats from `x`,
/// row after row, and their outputs, rows of `N` floats from `y`.
///
/// Raw pointers, because the threads of a [`Team`](crate::team::Team) each add their
/// share of output columns into the same rows at once: references to whole rows
/// would alias.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows {
    pub x: *const f32,
    pub y: *mut f32,
    pub rows: usize,
}

impl Rows {
    /// No rows (a place holder in fixed arrays).
    pub const NONE: Rows = Rows {
        x: std::ptr::null(),
        y: std::ptr::null_mut(),
        rows: 0,
    };
}

/// `y[m] += W x[m]` over the outputs of panels `panels` only, for every row of each
/// of `sets`, f32 panels: four rows at a time, each half panel (64 outputs) walked once
/// for them, 16 accumulators, so each weight streamed in is used four times. Half
/// panels are the outer loop, so a half panel (at most a few hundred KB) comes from
/// L3 once and from L2 for the rows after the first four. Per row, the same operations
/// in the same order as [`panel_walk`] (one fused multiply-add per column into a
/// zeroed accumulator, then added into `y` by [`add_lanes_raw`]): the same bits as one
/// row alone, whatever the panels and however the rows are grouped.
///
/// # Safety
/// The CPU has AVX-512F; `data` holds whole panels of `k * PANEL` weights for `n`
/// outputs and `panels` lies within them; each set's `x` holds `rows * k` floats and
/// its `y` `rows * n`, and no other thread touches these panels' outputs meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn f32_rows_avx512(
    data: &[f32],
    n: usize,
    k: usize,
    panels: std::ops::Range<usize>,
    sets: &[Rows],
) {
    for b in panels {
        let panel = &data[b * k * PANEL..(b + 1) * k * PANEL];
        for half in 0..2 {
            let lo = b * PANEL + 64 * half;
            if lo >= n {
                break;
            }
            for set in sets {
                let mut r0 = 0;
                while r0 < set.rows {
                    let (x, y) = (set.x.add(r0 * k), set.y.add(r0 * n));
                    match set.rows - r0 {
                        1 => half_panel::<1>(panel, half, k, x, y, n, lo),
                        2 => half_panel::<2>(panel, half, k, x, y, n, lo),
                        3 => half_panel::<3>(panel, half, k, x, y, n, lo),
                        _ => half_panel::<4>(panel, half, k, x, y, n, lo),
                    }
                    r0 += 4;
                }
            }
        }
    }
}

/// One half panel of [`f32_rows_avx512`] (outputs `lo .. lo + 64`) for `R` rows from
/// `x` (`k` floats each) into `y` (`n` floats each).
///
/// # Safety
/// As [`f32_rows_avx512`], for `R` rows at `x` and `y`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn half_panel<const R: usize>(
    panel: &[f32],
    half: usize,
    k: usize,
    x: *const f32,
    y: *mut f32,
    n: usize,
    lo: usize,
) {
    use std::arch::x86_64::*;
    // Weights are requested this far ahead (in floats: 16 panel columns, 8 KB): the
    // hardware prefetcher alone left the stream from L3 latency-bound (0.54 against
    // 0.46 ms for the reference speller's first cell, 4 rows).
    const AHEAD: usize = 16 * PANEL;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let mut w = panel.as_ptr().add(64 * half);
    let end = panel.as_ptr().add(panel.len());
    for p in 0..k {
        // Skipped near the panel's end, so that `add` stays inside the panel.
        let ahead = w.wrapping_add(AHEAD);
        if ahead < end {
            for v in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.add(16 * v) as *const i8);
            }
        }
        // SAFETY: `w` walks the half panel's `k` columns, `PANEL` floats apart.
        let wv: [__m512; 4] = std::array::from_fn(|v| _mm512_loadu_ps(w.add(16 * v)));
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `r` of `x` holds `k` floats.
            let xb = _mm512_set1_ps(*x.add(r * k + p));
            for (a, &wv) in acc.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(wv, xb, *a);
            }
        }
        // After the last column this points past the panel: wrapping, not `add`,
        // whose result must stay in bounds even if never read.
        w = w.wrapping_add(PANEL);
    }
    for (r, acc) in acc.iter().enumerate() {
        add_lanes_raw(y.add(r * n), n, lo, acc);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn f32_avx512(y: &mut [f32], data: &[f32], x: &[f32]) {
    use std::arch::x86_64::*;
    // SAFETY: 16 f32 values from a pointer `panel_walk` keeps inside the panel.
    panel_walk(y, data, x, |w| unsafe { _mm512_loadu_ps(w) })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bf16_avx512(y: &mut [f32], data: &[u16], x: &[f32]) {
    use std::arch::x86_64::*;
    panel_walk(y, data, x, |w| {
        // SAFETY: 16 bfloat16 values (32 bytes) inside the panel, as above.
        let h = unsafe { _mm256_loadu_si256(w as *const __m256i) };
        // bfloat16 is the top half of an f32: widen and shift into place.
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
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

    /// The portable loop (or its AVX2 build) on `p`'s data (f32 and bf16; int8 has
    /// its own, see `int8_kernels_agree_bit_for_bit`).
    fn run_portable(p: &PackedMatrix, y: &mut [f32], x: &[f32], avx2: bool) {
        macro_rules! go {
            ($f:ident) => {
                match &p.data {
                    Data::F32(d) => $f(y, d, x, |v| *v),
                    Data::Bf16(d) => $f(y, d, x, |h| from_bf16(*h)),
                    Data::Int8 { .. } => unreachable!("f32 and bf16 only"),
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

    /// Both forms of [`Recurrence`] (whichever this CPU would pick) compute `y += W x`,
    /// for a weight and for a transposed view of one.
    #[test]
    fn recurrences_packed_or_by_gemm_are_the_product() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let w = crate::init::uniform((300, 70), 1.0, &mut rng);
        for view in [w.view(), w.t()] {
            let (n, k) = view.dim();
            let x = crate::init::uniform((5, k), 1.0, &mut rng);
            let y0 = crate::init::uniform((5, n), 1.0, &mut rng);
            let mut want = y0.clone();
            crate::linalg::matmul(want.view_mut(), x.view(), view.t(), true);
            let mut forms = vec![Recurrence::Gemm(crate::linalg::transpose(view))];
            if avx512_rows() {
                forms.push(Recurrence::Packed(PackedMatrix::new(
                    view,
                    WeightFormat::F32,
                )));
            }
            for r in &forms {
                assert_eq!(r.dim(), (n, k));
                let mut y = y0.clone();
                r.acc(y.view_mut(), x.view());
                let err = (&y - &want).iter().fold(0f32, |m, d| m.max(d.abs()));
                assert!(err < 1e-4, "{r:?}: {err}");
            }
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
            (100, 3),
            (200, 9),
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
                // And a view with neither stride 1 (every other column of a wider one).
                let wide = Array2::from_shape_fn((n, 2 * k), |(i, j)| w[(i, j / 2)]);
                assert_eq!(
                    p,
                    PackedMatrix::new(wide.slice(ndarray::s![.., ..;2]), format)
                );
                assert_eq!((p.dim(), p.format()), ((n, k), format));
                let mut y = y0.clone();
                p.gemv_acc(&mut y, &x);
                // int8 products also round the input, to its own 127 steps.
                let xs = match format {
                    WeightFormat::Int8 => input_as_quantized(&x),
                    _ => x.clone(),
                };
                let exact = want(&format.stored(w.view()), &xs, &y0);
                for (i, (&got, &e)) in y.iter().zip(&exact).enumerate() {
                    assert!(
                        (f64::from(got) - e).abs() < 1e-4 * (1.0 + e.abs()),
                        "{format} [{n}, {k}] row {i}: {got} vs {e}"
                    );
                }
                // Many inputs at once: each row exactly as it comes alone, through
                // blocks of INT8_BLOCK (int8) or four (f32) and the rows after them.
                for m in [1, 2, 3, 6, 7, 2 * INT8_BLOCK + 1] {
                    let xm = Array2::from_shape_fn((m, k), |(r, j)| {
                        ((r * 13 + j * 7) % 11) as f32 * 0.3 * (r + 1) as f32 - 1.0
                    });
                    let mut ym = Array2::from_shape_fn((m, n), |(r, i)| (r + i) as f32);
                    let y0m = ym.clone();
                    p.gemm_acc(ym.view_mut(), xm.view());
                    for (r, (got, xr)) in ym.rows().into_iter().zip(xm.rows()).enumerate() {
                        let mut alone = y0m.row(r).to_vec();
                        p.gemv_acc(&mut alone, xr.as_slice().unwrap());
                        assert_eq!(got.to_vec(), alone, "{format} [{n}, {k}] gemm {m} row {r}");
                    }
                }
                if format == WeightFormat::Int8 {
                    continue;
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

    /// `x` as int8 products see it: rounded to multiples of its `max |x| / 127`.
    fn input_as_quantized(x: &[f32]) -> Vec<f32> {
        let mut q = vec![0u8; x.len().div_ceil(GROUP) * GROUP];
        let s = quantize_input(x, &mut q);
        q[..x.len()]
            .iter()
            .map(|&v| (i32::from(v) - 128) as f32 * s)
            .collect()
    }

    #[test]
    fn int8_kernels_agree_bit_for_bit() {
        // The VNNI kernels (on CPUs that have them, such as CI's) and the portable
        // loop compute the same integer sums, for single inputs and blocks.
        for (rows, k) in [(128, 4), (200, 37), (256, 1024)] {
            let w =
                Array2::from_shape_fn((rows, k), |(i, j)| ((i * 29 + j * 13) % 41) as f32 - 20.0);
            let p = PackedMatrix::new(w.view(), WeightFormat::Int8);
            let Data::Int8 { q, scales, sums } = &p.data else {
                unreachable!()
            };
            let kp = k.div_ceil(GROUP) * GROUP;
            // Whole products, with quantization and scaling: the portable build against
            // whatever `gemm_acc` ran, over blocks and single rows.
            let x = Array2::from_shape_fn((INT8_BLOCK + 2, k), |(r, c)| {
                ((r * 7 + c * 3) as f32 * 0.41).sin() * (r + 1) as f32
            });
            let mut fast = Array2::<f32>::ones((x.nrows(), rows));
            let mut slow = fast.clone();
            p.gemm_acc(fast.view_mut(), x.view());
            let w8 = Int8Weights {
                q,
                scales,
                sums,
                n: rows,
                k,
            };
            let (xs, m) = (x.as_slice().unwrap(), x.nrows());
            int8_products(&w8, slow.as_slice_mut().unwrap(), xs, m, int8_dots_portable);
            assert_eq!(fast, slow, "[{rows}, {k}] products");
            #[cfg(target_arch = "x86_64")]
            if crate::simd::avx2_fma() {
                let mut avx2 = Array2::<f32>::ones((x.nrows(), rows));
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { int8_products_avx2(&w8, avx2.as_slice_mut().unwrap(), xs, m) };
                assert_eq!(avx2, slow, "[{rows}, {k}] products, AVX2 build");
            }
            for f in [1, INT8_BLOCK] {
                let xq: Vec<u8> = (0..f * kp).map(|i| ((i * 37 + 11) % 256) as u8).collect();
                for panel in q.chunks_exact(kp * PANEL) {
                    let mut fast = vec![[0i32; PANEL]; f];
                    let mut slow = vec![[7i32; PANEL]; f];
                    #[cfg(target_arch = "x86_64")]
                    if crate::simd::avx512_vnni() {
                        // SAFETY: the CPU has VNNI; whole panel, `f` inputs of `kp`.
                        unsafe { vnni_block(panel, &xq, kp, &mut fast) };
                    } else {
                        int8_dots_portable(panel, &xq, kp, &mut fast);
                    }
                    int8_dots_portable(panel, &xq, kp, &mut slow);
                    assert_eq!(fast, slow, "[{rows}, {k}], {f} inputs");
                    // Against a direct sum over the matrix as given.
                    for (fi, acc) in slow.iter().enumerate() {
                        for (r, &a) in acc.iter().enumerate().take(rows.min(PANEL)) {
                            let direct: i32 = (0..k)
                                .map(|c| {
                                    i32::from(
                                        panel[(c / GROUP) * GROUP * PANEL + r * GROUP + c % GROUP],
                                    ) * i32::from(xq[fi * kp + c])
                                })
                                .sum();
                            assert_eq!(a, direct);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn int8_products_err_within_both_roundings_and_carry_nan() {
        let (n, k) = (150, 70);
        let w = Array2::from_shape_fn((n, k), |(i, j)| {
            ((i * k + j) as f32 * 0.37).sin() * (1.0 + i as f32 * 0.1)
        });
        let x: Vec<f32> = (0..k).map(|j| (j as f32 * 0.7).cos() * 3.0).collect();
        let p = PackedMatrix::new(w.view(), WeightFormat::Int8);
        let mut y = vec![0f32; n];
        p.gemv_acc(&mut y, &x);
        let sx = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (r, (row, &got)) in w.rows().into_iter().zip(&y).enumerate() {
            let sw = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let exact: f64 = row
                .iter()
                .zip(&x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            // Each product is off by at most |x| sw/2 + |w| sx/2 + sw sx/4.
            let bound: f64 = row
                .iter()
                .zip(&x)
                .map(|(&a, &b)| f64::from(b.abs() * sw / 2.0 + a.abs() * sx / 2.0 + sw * sx / 4.0))
                .sum();
            let err = (f64::from(got) - exact).abs();
            assert!(
                err <= bound * 1.001 + 1e-5,
                "row {r}: {got} vs {exact}, bound {bound}"
            );
            // And the bound is not loose to the point of meaning nothing.
            assert!(bound < 0.05 * row.iter().map(|v| v.abs()).sum::<f32>() as f64 * 3.0);
        }
        // A zero input adds nothing, nor does one too tiny for its own steps; a NaN
        // anywhere in the input reaches every row.
        let mut z = vec![1f32; n];
        p.gemv_acc(&mut z, &vec![0.0; k]);
        assert!(z.iter().all(|&v| v == 1.0));
        let mut tiny = vec![0f32; k];
        tiny[3] = 1e-38;
        tiny[9] = -1e-45;
        let mut zt = vec![0f32; n];
        p.gemv_acc(&mut zt, &tiny);
        assert!(zt.iter().all(|&v| v == 0.0), "{zt:?}");
        let mut bad = x.clone();
        bad[5] = f32::NAN;
        p.gemv_acc(&mut z, &bad);
        assert!(z.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn int8_sums_stay_exact_at_their_widest() {
        // Every weight at +-127 and every input at an extreme byte, over many columns:
        // the largest sums the kernels can meet, against exact f64.
        let (n, k) = (130, 8191);
        let w = Array2::from_shape_fn((n, k), |(i, j)| if (i + j) % 3 == 0 { -1.0 } else { 1.0 });
        let x: Vec<f32> = (0..k)
            .map(|j| if j % 5 == 0 { -2.0 } else { 2.0 })
            .collect();
        let p = PackedMatrix::new(w.view(), WeightFormat::Int8);
        let mut y = vec![0f32; n];
        p.gemv_acc(&mut y, &x);
        for (r, (&got, e)) in y.iter().zip(want(&w, &x, &vec![0.0; n])).enumerate() {
            assert!(
                (f64::from(got) - e).abs() <= 1e-5 * e.abs().max(1.0),
                "row {r}: {got} vs {e}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "overflow")]
    fn int8_refuses_more_columns_than_its_sums_hold() {
        PackedMatrix::new(Array2::<f32>::zeros((1, 70_000)).view(), WeightFormat::Int8);
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
            // Columns padded to a group of four; a scale and a sum per padded row.
            2 * 128 * 4 + 2 * 4 * 2 * 128
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
        let exact = want(&stored, &input_as_quantized(&xw), &vec![0.0; n]);
        let mut y = vec![0f32; n];
        pw.gemv_acc(&mut y, &xw);
        for (i, (&got, &e)) in y.iter().zip(&exact).enumerate() {
            assert!(
                (f64::from(got) - e).abs() < 1e-4 * (1e-3 + e.abs()),
                "row {i}: {got} vs {e}"
            );
        }
        // Packing quantises exactly as `stored` does.
        let p = PackedMatrix::new(w.view(), WeightFormat::Int8);
        let x: Vec<f32> = (0..40).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut y = vec![0f32; 5];
        p.gemv_acc(&mut y, &x);
        for (got, e) in y.iter().zip(want(&q, &input_as_quantized(&x), &[0.0; 5])) {
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
