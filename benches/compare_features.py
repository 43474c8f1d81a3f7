#!/usr/bin/env python3
"""Times other filterbank implementations on 60 s of 16 kHz audio, one thread, to set
next to `cargo bench -p lasr-features --bench features` run in the same sitting.

    python3 -m venv /tmp/lasr-torch-venv
    /tmp/lasr-torch-venv/bin/pip install torch==2.11.0 torchaudio==2.11.0 numpy \
        kaldi-native-fbank librosa
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 /tmp/lasr-torch-venv/bin/python benches/compare_features.py

Prints, per implementation, the median over repeats of seconds of audio per second of
wall time, and the largest difference from torchaudio's output (80 bins, dither 0).
Set LASR_BIN to a built `lasr` to time it end to end on the same audio too (that adds
WAV decoding and process start-up).
"""
import os
import subprocess
import sys
import tempfile
import time
import wave

import numpy as np

SECONDS = 60
SR = 16000
REPEATS = int(os.environ.get("REPEATS", "7"))

rng = np.random.default_rng(1)
t = np.arange(SECONDS * SR) / SR
audio = (3000 * rng.uniform(-0.5, 0.5, t.size) + 5000 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
audio = np.round(audio).astype(np.float32)  # 16-bit integer scale, as Kaldi reads WAV


def bench(name, fn):
    out = fn()  # warm-up, and the output to compare
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    return name, SECONDS / med, out


def main():
    import torch
    import torchaudio
    import torchaudio.compliance.kaldi as kaldi

    torch.set_num_threads(1)
    wave_t = torch.from_numpy(audio).unsqueeze(0)
    results = []
    results.append(bench(f"torchaudio {torchaudio.__version__} compliance.kaldi.fbank",
                         lambda: kaldi.fbank(wave_t, num_mel_bins=80, dither=0.0).numpy()))
    reference = results[0][2]

    import kaldi_native_fbank as knf

    # The binding takes a Python list; converting is left out of the timing so that
    # kaldi-native-fbank is not charged for numpy.
    samples = audio.tolist()

    def run_knf():
        opts = knf.FbankOptions()
        opts.frame_opts.dither = 0.0
        opts.mel_opts.num_bins = 80
        fb = knf.OnlineFbank(opts)
        fb.accept_waveform(SR, samples)
        fb.input_finished()
        return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])

    results.append(bench("kaldi-native-fbank OnlineFbank", run_knf))

    import librosa

    def run_librosa():
        # Not Kaldi's recipe (no pre-emphasis, Hann window, Slaney mel): same work, other numbers.
        m = librosa.feature.melspectrogram(y=audio, sr=SR, n_fft=512, win_length=400, hop_length=160,
                                           n_mels=80, center=False, power=2.0)
        return np.log(np.maximum(m, 1.1920929e-07)).T

    results.append(bench(f"librosa {librosa.__version__} melspectrogram + log", run_librosa))

    lasr = os.environ.get("LASR_BIN")
    if lasr:
        with tempfile.TemporaryDirectory() as d:
            wav = os.path.join(d, "a.wav")
            npy = os.path.join(d, "a.npy")
            with wave.open(wav, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(SR)
                w.writeframes(audio.astype("<i2").tobytes())
            env = dict(os.environ, RAYON_NUM_THREADS="1")

            def run_lasr():
                subprocess.run([lasr, "features", wav, "-o", npy], check=True, env=env, capture_output=True)
                return np.load(npy)

            results.append(bench("lasr features (process, WAV decode, .npy write)", run_lasr))

    print(f"{SECONDS} s of 16 kHz audio, 1 thread, median of {REPEATS}")
    print(f"{'implementation':<52} {'audio s / s':>12} {'max |diff| vs torchaudio':>26}")
    for name, speed, out in results:
        if out.shape == reference.shape:
            diff = f"{float(np.abs(out - reference).max()):.2e}"
        else:
            diff = f"n/a (shape {out.shape[0]} x {out.shape[1]})"
        print(f"{name:<52} {speed:>12,.0f} {diff:>26}")


if __name__ == "__main__":
    sys.exit(main())
