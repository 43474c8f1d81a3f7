"""PocketSphinx 5 (en-us, its wheel's own model) on the same utterances `lasr bench`
scores, with the same scoring, for the side-by-side table in BENCHMARKS.md.

    python3 -m venv /tmp/ps-venv && /tmp/ps-venv/bin/pip install pocketsphinx soundfile
    /tmp/ps-venv/bin/python benches/pocketsphinx_bench.py \
        ../shared/data/librispeech/test-clean-dev --limit 200

Utterances are taken in id order (as `lasr bench --limit N` takes them). Scoring as in
crates/model/src/bench.rs: upper-case, keep letters, digits, apostrophes and spaces,
collapse spaces; Levenshtein over words and over characters (spaces included), summed
over the corpus. The real-time factor is decoding seconds (file reading excluded) over
audio seconds, on one thread.
"""

import argparse
import json
import os
import sys
import time

import soundfile
from pocketsphinx import Decoder


def normalize(text):
    kept = "".join(c for c in text.upper() if c.isalnum() or c == "'" or c.isspace())
    return " ".join(kept.split())


def edits(ref, hyp):
    """(substitutions, deletions, insertions) of a minimum-edit alignment."""
    n, m = len(ref), len(hyp)
    # dp[i][j] = (cost, subs, dels, ins)
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            if ref[i - 1] == hyp[j - 1]:
                best = prev[j - 1]
            else:
                c, s, d, k = prev[j - 1]
                best = (c + 1, s + 1, d, k)
            c, s, d, k = prev[j]
            if c + 1 < best[0]:
                best = (c + 1, s, d + 1, k)
            c, s, d, k = cur[j - 1]
            if c + 1 < best[0]:
                best = (c + 1, s, d, k + 1)
            cur.append(best)
        prev = cur
    return prev[m][1:]


def corpus(root):
    items = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".trans.txt"):
                for line in open(os.path.join(dirpath, f)):
                    uid, _, text = line.strip().partition(" ")
                    items.append((uid, os.path.join(dirpath, uid + ".flac"), text))
    return sorted(items)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    items = corpus(args.corpus)[: args.limit]
    decoder = Decoder(samprate=16000)
    totals = {"w": [0, 0, 0, 0], "c": [0, 0, 0, 0]}
    audio_s = decode_s = 0.0
    for uid, path, text in items:
        pcm, rate = soundfile.read(path, dtype="int16")
        assert rate == 16000, path
        start = time.perf_counter()
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp().hypstr if decoder.hyp() else ""
        decode_s += time.perf_counter() - start
        audio_s += len(pcm) / rate
        ref, hyp = normalize(text), normalize(hyp)
        for key, (r, h) in {"w": (ref.split(), hyp.split()), "c": (list(ref), list(hyp))}.items():
            s, d, i = edits(r, h)
            t = totals[key]
            t[0] += s
            t[1] += d
            t[2] += i
            t[3] += len(r)
    rate = lambda t: (t[0] + t[1] + t[2]) / max(t[3], 1)
    print(json.dumps({
        "system": "pocketsphinx " + __import__("pocketsphinx").__version__ if hasattr(__import__("pocketsphinx"), "__version__") else "pocketsphinx",
        "utterances": len(items),
        "audio_hours": audio_s / 3600,
        "wer": rate(totals["w"]),
        "cer": rate(totals["c"]),
        "words": dict(zip(["substitutions", "deletions", "insertions", "reference_len"], totals["w"])),
        "chars": dict(zip(["substitutions", "deletions", "insertions", "reference_len"], totals["c"])),
        "real_time_factor": decode_s / audio_s,
    }))


if __name__ == "__main__":
    sys.exit(main())
