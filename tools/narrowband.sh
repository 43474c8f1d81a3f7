#!/usr/bin/env bash
# Telephone-band copies of LibriSpeech-layout corpora, for models that must read 8 kHz
# audio (FSDD's spoken digits): every FLAC resampled to 8 kHz WAV with sox's
# anti-aliasing `rate`, so that nothing above 4 kHz survives, as in FSDD. lasr
# resamples them back to 16 kHz when it reads them, exactly as it does FSDD's files.
#
# usage: tools/narrowband.sh OUT CORPUS...
# CORPUS: a LibriSpeech-layout folder, or a manifest (a .tsv of path<TAB>transcript,
# such as tools/tts-corpus.sh writes). Writes OUT/wav/<utterance>.wav and
# OUT/manifest.tsv (path<TAB>transcript, for `lasr train --train OUT/manifest.tsv`).
# Resumable: files already converted are kept.
# Needs sox (Debian: sox libsox-fmt-all for FLAC input).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 OUT CORPUS..." >&2
  exit 2
fi
out=$1
shift
command -v sox >/dev/null || { echo "$0: sox is not installed" >&2; exit 1; }
mkdir -p "$out/wav"
manifest="$out/manifest.tsv.tmp"
: > "$manifest"
# Converts $1 to OUT/wav/$2.wav (unless done) and lists it with transcript $3.
convert() {
  local src=$1 dst="$out/wav/$2.wav" text=$3
  if [ ! -f "$src" ]; then
    echo "$0: $src is missing; skipped" >&2
    return
  fi
  if [ ! -s "$dst" ]; then
    # Convert to a temporary name first, so an interrupted run leaves no half file.
    if ! sox "$src" -r 8000 "$dst.tmp.wav" 2>/dev/null; then
      echo "$0: sox could not read $src; skipped" >&2
      rm -f "$dst.tmp.wav"
      return
    fi
    mv "$dst.tmp.wav" "$dst"
  fi
  printf '%s\t%s\n' "$(realpath "$dst")" "$text" >> "$manifest"
}
for corpus in "$@"; do
  if [ -f "$corpus" ]; then
    while IFS=$'\t' read -r src text; do
      name=$(basename "$src")
      convert "$src" "${name%.*}" "$text"
    done < "$corpus"
    continue
  fi
  [ -d "$corpus" ] || { echo "$0: $corpus is neither a folder nor a manifest" >&2; exit 1; }
  find "$corpus" -name '*.trans.txt' -print0 | sort -z | while IFS= read -r -d '' trans; do
    dir=$(dirname "$trans")
    while read -r id text; do
      convert "$dir/$id.flac" "$id" "$text"
    done < "$trans"
  done
done
mv "$manifest" "$out/manifest.tsv"
echo "$(wc -l < "$out/manifest.tsv") utterances in $out/manifest.tsv" >&2
