//! Element-wise non-linearities written to vectorise: branch-free polynomial `exp`
//! (Cephes' `expf`: range reduction by ln 2, degree-5 polynomial, exponent by bit
//! arithmetic), and sigmoid and tanh built on it. libm's `expf` and `tanhf` are
//! calls the compiler cannot vectorise; these inline into the LSTM's gate loop.

/// `e^x` for `x` in `[-87.3, 88.3]`, within 2 ulp of `f32::exp`; inputs beyond
/// are clamped (giving ~1e-38 and ~2e38), which is what sigmoid and tanh need.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that x - n ln2 is exact to f32 precision.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 leaves round(x log2 e) in the low mantissa bits, to be read as
    // an integer: `f32::round` (halves away from zero) has no vector instruction and
    // `as i32` saturates, and either one kept every loop calling this scalar.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + SHIFT;
    let n = shifted - SHIFT;
    let n_int = shifted.to_bits().wrapping_sub(SHIFT.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_66;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // Multiply by 2^n through the exponent bits (n is within the normal range here).
    f32::from_bits(((n_int + 127) as u32) << 23) * e
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh`, as Cephes' `tanhf`: an odd polynomial below 0.625 in magnitude (keeping
/// relative accuracy near zero, where `1 - 2 / (e^{2x} + 1)` would cancel), that
/// formula above. Both are computed and one selected, so the loop stays vectorised.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let mut p = -5.704_988_7e-3;
    p = p * z + 2.063_909e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 0.133_314_42;
    p = p * z - 0.333_332_8;
    let small = p * z * x + x;
    let big = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        big
    }
}

/// Log-softmax of each row of `x` `[N, V]`, in place: `x - (max + ln sum exp(x - max))`
/// (shifted by the row's maximum so `exp` never overflows). The maximum is subtracted
/// before the log-sum, not folded into it: `max + ln sum` would round at the scale of
/// large logits and cost the result its low bits.
pub fn log_softmax_rows(mut x: ndarray::ArrayViewMut2<f32>) {
    for mut row in x.rows_mut() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let ln_sum = row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
        row.mapv_inplace(|v| (v - max) - ln_sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_over_the_useful_range() {
        let mut worst = 0.0f64;
        let mut x = -87.3f32;
        while x <= 88.3 {
            let exact = f64::from(x).exp();
            worst = worst.max((f64::from(exp(x)) - exact).abs() / exact);
            x += 0.0137;
        }
        assert!(
            worst < 3.0 * f64::from(f32::EPSILON),
            "worst relative error {worst}"
        );
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn sigmoid_and_tanh_match_f64_and_saturate_cleanly() {
        let mut x = -30.0f32;
        while x < 30.0 {
            let s = 1.0 / (1.0 + (-f64::from(x)).exp());
            assert!((f64::from(sigmoid(x)) - s).abs() < 2e-7, "sigmoid({x})");
            let t = f64::from(x).tanh();
            assert!(
                (f64::from(tanh(x)) - t).abs() <= 2e-7 * t.abs().max(1e-3),
                "tanh({x})"
            );
            x += 0.0071;
        }
        assert!(sigmoid(-200.0) < 1e-37);
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(tanh(200.0), 1.0);
        assert_eq!(tanh(-200.0), -1.0);
        // Relative accuracy survives near zero.
        for x in [1e-6f32, -3e-4, 0.01, 0.6249, 0.6251] {
            let t = f64::from(x).tanh();
            assert!(
                (f64::from(tanh(x)) - t).abs() <= 4.0 * f64::from(f32::EPSILON) * t.abs(),
                "tanh({x})"
            );
        }
    }

    #[test]
    fn log_softmax_rows_normalise_and_survive_large_logits() {
        let mut x = ndarray::arr2(&[[1.0f32, 2.0, 3.0], [1000.0, 1000.0, -1000.0]]);
        log_softmax_rows(x.view_mut());
        for row in x.rows() {
            let total: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
            assert!((total - 1.0).abs() < 1e-6, "row sums to {total}");
        }
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((f64::from(x[[0, 0]]) - (1.0 - z)).abs() < 1e-6);
        assert!((f64::from(x[[1, 0]]) + std::f64::consts::LN_2).abs() < 1e-6);
    }
}
