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
# Resumable: files already converted are kept (trusted by name: delete OUT after
# changing the sources), and the manifest is rebuilt on every run.
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
  # Two inputs of one name (two TTS manifests both start at tts-000001) would share a
  # file: refuse rather than list one recording under another's transcript.
  if grep -qF -- "$(realpath -m "$dst")"$'\t' "$manifest"; then
    echo "$0: two inputs are named $2 (the second is $src); convert them into separate OUT folders" >&2
    exit 1
  fi
  if [ ! -s "$dst" ]; then
    # Convert to a temporary name first, so an interrupted run leaves no half file.
    if ! err=$(sox "$src" -r 8000 "$dst.tmp.wav" 2>&1); then
      echo "$0: sox could not read $src ($err); skipped" >&2
      rm -f "$dst.tmp.wav"
      return
    fi
    mv "$dst.tmp.wav" "$dst"
  fi
  printf '%s\t%s\n' "$(realpath "$dst")" "$text" >> "$manifest"
}
for corpus in "$@"; do
  before=$(wc -l < "$manifest")
  if [ -f "$corpus" ]; then
    base=$(dirname "$corpus")
    # `|| [ -n "$src" ]` keeps a last line without a newline.
    while IFS=$'\t' read -r src text || [ -n "$src" ]; do
      # Relative paths are relative to the manifest, as lasr reads them.
      case $src in /*) ;; *) src="$base/$src" ;; esac
      name=$(basename "$src")
      convert "$src" "${name%.*}" "$text"
    done < "$corpus"
  elif [ -d "$corpus" ]; then
    find -H "$corpus" -name '*.trans.txt' -print0 | sort -z | while IFS= read -r -d '' trans; do
      dir=$(dirname "$trans")
      while read -r id text || [ -n "$id" ]; do
        convert "$dir/$id.flac" "$id" "$text"
      done < "$trans"
    done
  else
    echo "$0: $corpus is neither a folder nor a manifest" >&2
    exit 1
  fi
  if [ "$(wc -l < "$manifest")" -eq "$before" ]; then
    echo "$0: nothing converted from $corpus (no *.trans.txt files, or an empty manifest)" >&2
    exit 1
  fi
done
mv "$manifest" "$out/manifest.tsv"
echo "$(wc -l < "$out/manifest.tsv") utterances in $out/manifest.tsv" >&2
