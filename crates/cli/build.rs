//! Embeds the default model (and its character, word and LSTM language models) from `assets/` when they are
//! there, so that `lasr transcribe` works with no flags; a build without them (a
//! source package, say) still works, with `--model` required.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lasr_builtin_model)");
    println!("cargo::rustc-check-cfg=cfg(lasr_builtin_lm)");
    println!("cargo::rustc-check-cfg=cfg(lasr_builtin_word_lm)");
    println!("cargo::rustc-check-cfg=cfg(lasr_builtin_rnnlm)");
    println!("cargo::rustc-check-cfg=cfg(lasr_builtin_rnnlm_backward)");
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    for (file, cfg) in [
        ("model.safetensors", "lasr_builtin_model"),
        ("lm.bin", "lasr_builtin_lm"),
        ("words.bin", "lasr_builtin_word_lm"),
        ("rnnlm.safetensors", "lasr_builtin_rnnlm"),
        ("rnnlm-backward.safetensors", "lasr_builtin_rnnlm_backward"),
    ] {
        let path = assets.join(file);
        println!("cargo::rerun-if-changed={}", path.display());
        if path.is_file() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
