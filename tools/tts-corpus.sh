#!/usr/bin/env bash
# Synthesises a training corpus from text with Debian's offline TTS engines: one WAV
# per sentence, each in a voice and speaking rate drawn from a seeded sequence, and a
# manifest `OUT/manifest.tsv` (PATH<TAB>TRANSCRIPT) that `lasr train --train` reads.
#
#   tools/tts-corpus.sh OUT N SEED TEXT...
#
# TEXT: files of one sentence per line, LibriSpeech lm-text style (a leading utterance
# id such as 19-198-0001 is dropped). N sentences of MIN_WORDS (default 3) to
# MAX_WORDS (default 40) words are drawn at random; SEED (a positive integer) makes the
# draw, the voices and the rates, so the same arguments give the same corpus.
# VOICES='engine:voice ...' replaces the voice mix below with these, drawn uniformly
# (engines: flite, festival, espeak, pico; e.g. 'espeak:de espeak:fr-fr' for English
# words read by other languages' letter-to-sound rules, a crude stand-in for accents;
# 'espeak:mb-us1' for espeak-ng driving an MBROLA diphone voice; 'pico:en-US').
# VARY_PITCH=1 also draws each flite, espeak-ng and pico utterance's mean pitch (flite
# 70 to 250 Hz, espeak-ng 10 to 90 of its 0-99 scale, pico 70% to 150% of its own
# pitch; a third column of voices.tsv): more voices from the same engines. The draw
# shares the seeded sequence, so it also moves every later sentence's voice and rate:
# a corpus made with it is another corpus.
# Needs: flite, festival (voices kal_diphone, cmu_us_slt_arctic_hts), espeak-ng
#   apt-get install flite festival festvox-kallpc16k festvox-us-slt-hts espeak-ng
# and, for VOICES only, with Debian's contrib and non-free components enabled:
#   apt-get install mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils
# Re-running skips sentences whose WAV exists, so an interrupted run can go on.
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
out=$1 n=$2 seed=$3
shift 3
if ! [[ $seed =~ ^[1-9][0-9]{0,8}$ && $n =~ ^[1-9][0-9]*$ ]]; then
    echo "error: N and SEED must be positive integers (SEED below 10^9), not '$n' and '$seed'" >&2
    exit 2
fi
vary_pitch=${VARY_PITCH:-0}
if ! [[ $vary_pitch =~ ^[01]$ ]]; then
    echo "error: VARY_PITCH must be 0 or 1, not '$vary_pitch'" >&2
    exit 2
fi
chosen=()
read -r -a chosen <<< "${VOICES:-}"
# `${a[@]+"${a[@]}"}`: an empty array is "unbound" to `set -u` in bash before 4.4.
for v in ${chosen[@]+"${chosen[@]}"}; do
    if ! [[ $v =~ ^(flite|festival|espeak|pico):[A-Za-z0-9_+-]+$ ]]; then
        echo "error: VOICES entries are ENGINE:VOICE with ENGINE flite, festival, espeak or pico, not '$v'" >&2
        exit 2
    fi
done
max_words=${MAX_WORDS:-40}
min_words=${MIN_WORDS:-3}
if ! [[ $min_words =~ ^[1-9][0-9]*$ && $max_words =~ ^[1-9][0-9]*$ ]] || ((min_words > max_words)); then
    echo "error: MIN_WORDS and MAX_WORDS must be positive integers, MIN_WORDS <= MAX_WORDS (not '$min_words', '$max_words')" >&2
    exit 2
fi
# The engines this corpus uses: the three of the default mix unless VOICES names others.
tools=(flite text2wave espeak-ng)
if (( ${#chosen[@]} > 0 )); then
    tools=()
    for v in "${chosen[@]}"; do
        case ${v%%:*} in
            flite) tools+=(flite) ;;
            festival) tools+=(text2wave) ;;
            espeak) tools+=(espeak-ng) ;;
            pico) tools+=(pico2wave) ;;
        esac
    done
fi
for tool in "${tools[@]}"; do
    command -v "$tool" > /dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done
mkdir -p "$out/wav"

# Voices: half the sentences go to the six closest to natural speech (flite's four
# 16 kHz voices, festival's two), half to espeak-ng's English accents with its male and
# female variants (formant synthesis: robotic, but many speakers). The default model
# reads festival's HTS voice at ~29% WER, flite's at 54-76% and espeak-ng's at 72-93%
# (DEVELOPERS.md).
natural=(flite:kal16 flite:awb flite:rms flite:slt festival:kal_diphone
    festival:cmu_us_slt_arctic_hts)
robotic=()
for accent in en-us en-gb en-gb-scotland en-gb-x-rp en-029 en-gb-x-gbclan en-gb-x-gbcwmd; do
    for variant in m1 m3 m5 m7 f1 f2 f4; do
        robotic+=("espeak:$accent+$variant")
    done
done

# Pick the sentences: strip ids, keep lengths in range, and shuffle by sorting on keys
# from a Park-Miller generator seeded with SEED (exact in awk's doubles, so every awk
# draws the same; `shuf --random-source=<(yes SEED)` was deterministic but far from
# uniform: it kept neighbouring sentences together and favoured the start).
awk -v min="$min_words" -v max="$max_words" -v seed="$seed" 'BEGIN { s = seed % 2147483647
        for (i = 0; i < 20; i++) s = (s * 16807) % 2147483647 }  # small seeds start small
    { if ($1 ~ /^[0-9]+-[0-9]+-[0-9]+$/) { $1 = ""; sub(/^ /, "") }
      if (NF >= min && NF <= max) { s = (s * 16807) % 2147483647; printf "%d\t%s\n", s, $0 } }' "$@" |
    sort -s -n -k1,1 | awk -v n="$n" 'NR <= n' | cut -f2- > "$out/sentences.txt"

: > "$out/manifest.tsv.tmp"
: > "$out/voices.tsv.tmp"
i=0
# Each sentence gets a voice and a rate from an LCG seeded with SEED (bash's $RANDOM
# would differ between runs).
state=$seed
# Sets `rnd` (no subshell, so that `state` advances).
next() { state=$(( (state * 1103515245 + 12345) % 2147483648 )); rnd=$(( state / 65536 )); }
while IFS= read -r text; do
    i=$((i + 1))
    id=$(printf 'tts-%06d' "$i")
    wav="$out/wav/$id.wav"
    next
    if (( ${#chosen[@]} > 0 )); then
        voice=${chosen[$(( rnd % ${#chosen[@]} ))]}
    elif (( rnd % 2 == 0 )); then
        next; voice=${natural[$(( rnd % ${#natural[@]} ))]}
    else
        next; voice=${robotic[$(( rnd % ${#robotic[@]} ))]}
    fi
    next; r=$(( rnd % 41 ))   # 0..40: speaking rate 0.8x to 1.2x (festival: its own)
    # Drawn only when asked, so that corpora made without it keep their voices.
    flite_pitch=() espeak_pitch=() pico_pitch=100
    if (( vary_pitch )); then
        next; p=$(( rnd % 81 ))
        flite_pitch=(--setf int_f0_target_mean=$((70 + p * 180 / 80)))
        espeak_pitch=(-p $((10 + p)))
        pico_pitch=$((70 + p))
        case $voice in
            flite:*) pitch_note="${flite_pitch[1]}" ;;
            espeak:*) pitch_note="pitch=$((10 + p))" ;;
            pico:*) pitch_note="pitch=$pico_pitch%" ;;
            *) pitch_note="-" ;;   # festival's voices keep their own
        esac
    fi
    lower=$(printf '%s' "$text" | tr 'A-Z' 'a-z')
    if [ ! -s "$wav" ]; then
        case $voice in
            flite:*)
                stretch=$(awk -v r="$r" 'BEGIN { printf "%.3f", 1 / (0.8 + r / 100) }')
                flite -voice "${voice#flite:}" --setf duration_stretch="$stretch" \
                    ${flite_pitch[@]+"${flite_pitch[@]}"} -t "$lower" -o "$wav.tmp.wav" < /dev/null ;;
            festival:*)
                printf '%s\n' "$lower" > "$wav.txt"
                text2wave -eval "(voice_${voice#festival:})" "$wav.txt" -o "$wav.tmp.wav" < /dev/null
                rm -f "$wav.txt" ;;
            espeak:*)
                # espeak-ng speaks 175 words per minute by default.
                espeak-ng -v "${voice#espeak:}" -s $((140 + r * 70 / 40)) \
                    ${espeak_pitch[@]+"${espeak_pitch[@]}"} -w "$wav.tmp.wav" "$lower" < /dev/null ;;
            pico:*)
                # pico2wave takes rate and pitch only as markup (percent of its own),
                # so markup's own characters `<`, `>` and `&` become spaces.
                plain=${lower//[<>&]/ }
                pico2wave -l "${voice#pico:}" -w "$wav.tmp.wav" \
                    "<speed level='$((80 + r))'><pitch level='$pico_pitch'>$plain</pitch></speed>" < /dev/null ;;
        esac
        mv "$wav.tmp.wav" "$wav"
    fi
    printf '%s\t%s\n' "$(realpath "$wav")" "$text" >> "$out/manifest.tsv.tmp"
    if (( vary_pitch )); then
        printf '%s\t%s\t%s\n' "$id" "$voice" "$pitch_note" >> "$out/voices.tsv.tmp"
    else
        printf '%s\t%s\n' "$id" "$voice" >> "$out/voices.tsv.tmp"
    fi
    if (( i % 100 == 0 )); then echo "$i / $n" >&2; fi
done < "$out/sentences.txt"
mv "$out/manifest.tsv.tmp" "$out/manifest.tsv"
mv "$out/voices.tsv.tmp" "$out/voices.tsv"
echo "$out/manifest.tsv: $i utterances" >&2
