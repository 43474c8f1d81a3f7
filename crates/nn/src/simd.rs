//! Run-time CPU feature checks, made once.

use std::sync::OnceLock;

/// The CPU runs AVX2 and FMA, so loops compiled for them may be called.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

/// The CPU runs AVX-512F (and so AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f") && avx2_fma())
}

/// The CPU runs AVX-512 VNNI (`vpdpbusd`, four byte products per 32-bit lane) besides
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_vnni() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vnni") && avx512())
}
