#!/usr/bin/env python3
"""One-off check on real speech (not run by CI): lasr's features of LibriSpeech FLAC
files against torchaudio's, with the audio decoded by libsndfile (libFLAC).

    /tmp/lasr-torch-venv/bin/pip install soundfile
    cargo build --release -p lasr-cli
    /tmp/lasr-torch-venv/bin/python crates/features/tests/golden/check_real_speech.py \
        ../shared/data/librispeech/test-clean-dev [N]

Prints the distribution of the per-file largest |difference| and how many elements
exceed the golden test's 2e-3 tolerance, for lasr against torchaudio (float32), and for
both against torchaudio in float64, which shows how much of the difference is float32
rounding that neither implementation can avoid.
"""
import glob
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import soundfile
import torch
import torchaudio.compliance.kaldi as kaldi

root = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 50
here = os.path.dirname(os.path.abspath(__file__))
lasr = os.environ.get("LASR_BIN", os.path.join(here, "../../../../target/release/lasr"))
files = sorted(glob.glob(os.path.join(root, "**/*.flac"), recursive=True))
random.Random(0).shuffle(files)
files = files[:n]
torch.set_num_threads(1)
pairs = ["lasr vs torchaudio", "lasr vs float64", "torchaudio vs float64"]
worst = {p: [] for p in pairs}
over = {p: 0 for p in pairs}
total, seconds = 0, 0.0
with tempfile.TemporaryDirectory() as out:
    subprocess.run([lasr, "features", *files, "--out-dir", out], check=True, capture_output=True)
    for f in files:
        pcm, sr = soundfile.read(f, dtype="int16")
        assert sr == 16000
        seconds += len(pcm) / sr
        wave = torch.from_numpy(pcm.astype(np.float32)).unsqueeze(0)
        ref = kaldi.fbank(wave, num_mel_bins=80, dither=0.0).numpy()
        exact = kaldi.fbank(wave.double(), num_mel_bins=80, dither=0.0).numpy()
        got = np.load(os.path.join(out, os.path.basename(f)[:-5] + ".npy"))
        assert got.shape == ref.shape, (f, got.shape, ref.shape)
        for p, (a, b) in zip(pairs, [(got, ref), (got, exact), (ref, exact)]):
            d = np.abs(a - b)
            worst[p].append(float(d.max()))
            over[p] += int((d > 2e-3).sum())
        total += ref.size
print(f"{len(files)} files, {seconds / 3600:.2f} h, {total} elements")
for p in pairs:
    w = np.array(worst[p])
    print(f"{p:<22} per-file max |diff|: median {np.median(w):.2e}, 90th pct {np.percentile(w, 90):.2e}, "
          f"max {w.max():.2e}; elements over 2e-3: {over[p]} ({over[p] / total:.1e})")
