#!/usr/bin/env python3
"""Makes the golden filterbank cases that crates/features/tests/golden.rs checks.

For every case: a synthesised 16-bit 16 kHz mono WAV (the input), the features that
torchaudio.compliance.kaldi.fbank computes from it as an .npy of float32 (the expected
output), and the lasr FeatureConfig fields in cases.json. The test reads only the
committed files; nothing here runs in CI.

    python3 -m venv /tmp/lasr-torch-venv
    /tmp/lasr-torch-venv/bin/pip install torch==2.11.0 torchaudio==2.11.0 numpy
    /tmp/lasr-torch-venv/bin/python crates/features/tests/golden/make_golden.py

Samples are handed to torchaudio at 16-bit integer scale, as Kaldi reads a WAV.
"""
import json
import os
import wave

import numpy as np
import torch
import torchaudio
import torchaudio.compliance.kaldi as kaldi

HERE = os.path.dirname(os.path.abspath(__file__))
SR = 16000
rng = np.random.default_rng(20261126)


def room_floor(n, white=40.0, rumble=800.0):
    """A recording's noise floor: faint hiss plus low-frequency room rumble.

    Without it, a pure tone leaves the lowest mel filters (narrower than one FFT bin, and
    attenuated 30 dB by pre-emphasis) with energies 100+ dB below the frame's peak, which
    float32 cannot resolve: there torchaudio's own float32 output differs from its float64
    output by up to 0.38 (in log), and lasr's by a similar amount. No microphone gets
    near that dynamic range, so the golden signals do not ask for it."""
    r = np.cumsum(rng.normal(0, 1, n))
    r -= np.convolve(r, np.ones(801) / 801, mode="same")
    return rng.normal(0, white, n) + r / r.std() * rumble


def chirp(n):
    # Linear sweep 30 Hz -> 7.9 kHz, with a slow amplitude swell, over a room's floor.
    t = np.arange(n) / SR
    dur = n / SR
    f0, f1 = 30.0, 7900.0
    phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / dur * t * t)
    amp = 4000 + 2000 * np.sin(2 * np.pi * 0.7 * t)
    return amp * np.sin(phase) + room_floor(n)


def noise(n):
    return rng.normal(0.0, 3000.0, n)


def resonator(x, freq, bw):
    # Two-pole resonance at freq Hz with bandwidth bw Hz (a formant).
    r = np.exp(-np.pi * bw / SR)
    a1 = -2 * r * np.cos(2 * np.pi * freq / SR)
    a2 = r * r
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    g = 1 - r
    for i, v in enumerate(x):
        y0 = g * v - a1 * y1 - a2 * y2
        y[i] = y0
        y2, y1 = y1, y0
    return y


def speech_like(n):
    """Vowels from a glottal pulse train with a moving pitch through three formants,
    separated by fricative noise bursts, over a room's noise floor (no digital silence)."""
    t = np.arange(n) / SR
    f0 = 120 + 40 * np.sin(2 * np.pi * 1.3 * t)
    phase = np.cumsum(f0 / SR)
    source = np.zeros(n)
    idx = np.nonzero(np.diff(np.floor(phase)) > 0)[0]
    source[idx] = 1.0
    # Spread each pulse a little (a crude glottal pulse).
    source = np.convolve(source, np.hanning(24), mode="same")
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480)]
    seg = n // len(vowels)
    out = np.zeros(n)
    for k, (a, b, c) in enumerate(vowels):
        s = slice(k * seg, n if k == len(vowels) - 1 else (k + 1) * seg)
        x = source[s]
        v = resonator(x, a, 80) * 1.0 + resonator(x, b, 100) * 0.6 + resonator(x, c, 120) * 0.3
        env = np.hanning(len(x)) ** 0.5
        out[s] = v * env
    out = out / np.max(np.abs(out)) * 14000
    # Fricatives between vowels: high-passed noise bursts.
    fric = np.diff(rng.normal(0, 1500, n + 1))
    for k in range(1, len(vowels)):
        c = k * seg
        w = np.zeros(n)
        w[c - 800:c + 800] = np.hanning(1600)
        out += fric * w
    return out + room_floor(n, white=10.0, rumble=300.0)


def to_int16(x):
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def write_wav(path, samples):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(samples.astype("<i2").tobytes())


# Each case: name, signal, lasr FeatureConfig overrides (field names as in Rust).
CASES = [
    ("chirp", to_int16(chirp(24_037)), {}),
    ("white_noise", to_int16(noise(16_000)), {}),
    ("speech_like", to_int16(speech_like(36_851)), {}),
    ("one_frame", to_int16(noise(400)), {}),
    (
        "speech_hamming_40bins_nosnip",
        to_int16(speech_like(20_333)),
        {"window": "hamming", "num_mel_bins": 40, "low_freq": 64.0, "high_freq": -400.0,
         "snip_edges": False, "preemphasis": 0.9},
    ),
    (
        "noise_blackman_magnitude_400fft",
        to_int16(noise(8_123)),
        {"window": "blackman", "round_to_power_of_two": False, "use_power": False,
         "num_mel_bins": 23, "remove_dc_offset": False},
    ),
    (
        "chirp_hanning_20ms_shift12p5",
        to_int16(chirp(12_345)),
        {"window": "hanning", "frame_length_ms": 20.0, "frame_shift_ms": 12.5, "num_mel_bins": 64},
    ),
    (
        "noise_rectangular_no_preemphasis",
        to_int16(noise(5_000)),
        {"window": "rectangular", "preemphasis": 0.0, "low_freq": 300.0, "high_freq": 7000.0},
    ),
]

RENAME = {
    "window": "window_type",
    "num_mel_bins": "num_mel_bins",
    "low_freq": "low_freq",
    "high_freq": "high_freq",
    "snip_edges": "snip_edges",
    "preemphasis": "preemphasis_coefficient",
    "round_to_power_of_two": "round_to_power_of_two",
    "use_power": "use_power",
    "remove_dc_offset": "remove_dc_offset",
    "frame_length_ms": "frame_length",
    "frame_shift_ms": "frame_shift",
}


def main():
    manifest = []
    for name, samples, overrides in CASES:
        kwargs = dict(num_mel_bins=80, dither=0.0, sample_frequency=SR)
        for k, v in overrides.items():
            kwargs[RENAME[k]] = v
        wave_t = torch.from_numpy(samples.astype(np.float32)).unsqueeze(0)
        feats = kaldi.fbank(wave_t, **kwargs).numpy().astype(np.float32)
        # A case is only fair to a float32 implementation if float32 can resolve it:
        # torchaudio's own float32 and float64 answers must agree well inside the
        # tolerance the Rust test uses (2e-3), as torchaudio and kaldi-native-fbank do (1e-3).
        exact = kaldi.fbank(wave_t.double(), **kwargs).numpy()
        conditioning = float(np.abs(feats - exact).max())
        assert conditioning < 1.5e-3, f"{name}: float32 vs float64 differ by {conditioning}"
        write_wav(os.path.join(HERE, f"{name}.wav"), samples)
        np.save(os.path.join(HERE, f"{name}.npy"), feats)
        manifest.append({"name": name, "samples": int(len(samples)), "frames": int(feats.shape[0]),
                         "float32_vs_float64": conditioning, "config": overrides})
        print(f"{name}: {len(samples)} samples -> {feats.shape}, float32 vs float64 {conditioning:.1e}")
    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump({"made_by": f"torchaudio {torchaudio.__version__}, torch {torch.__version__}",
                   "cases": manifest}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
