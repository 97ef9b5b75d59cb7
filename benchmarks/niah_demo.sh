#!/usr/bin/env bash
# Needle in a haystack on ESC-10, small enough for a 2-core CPU: fine-tune a tiny AuM and a tiny DASS from random
# weights on ESC-10 folds 1-4 (5 s clips; the epoch is chosen on a validation carve of those folds), then hide a
# class-balanced subset of fold 5 in haystacks of 5 s to 10 minutes (zeros, and babble from the Speech Commands
# sample at 10 dB), at the start, middle and end, and score both run modes (whole input in one pass; windows of the
# training length, max-pooled). docs/niah.md has the method; the README section "Needle in a haystack" the result.
#
# Usage: benchmarks/niah_demo.sh [OUT]          (default runs/niah_demo; rerunning resumes or skips what is done)
# Env: AUM_EPOCHS, DASS_EPOCHS, AUM_DEPTH, LR, BATCH, PER_CLASS, LENGTHS, FIGURE (where the plot goes; "" = nowhere).
# AuM runs at depth 6 by default (the tiny preset's width, 192; the preset's 24 layers make a 10-minute whole pass
# about 4x slower, and the demonstration then takes hours here: AUM_DEPTH=24 for it).
# The two models train side by side, one thread each, and are tested side by side likewise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=$(cd ../shared/data && pwd)        # absolute: manifest paths resolve against the manifest's folder
OUT=${1:-runs/niah_demo}
AUM_EPOCHS=${AUM_EPOCHS:-10}
DASS_EPOCHS=${DASS_EPOCHS:-20}
AUM_DEPTH=${AUM_DEPTH:-6}
LR=${LR:-1e-3}
BATCH=${BATCH:-16}
PER_CLASS=${PER_CLASS:-2}
LENGTHS=${LENGTHS:-"5s 30s 2m 10m"}
FIGURE=${FIGURE-docs/figures/niah_esc10.png}
export OMP_NUM_THREADS=1
TIMEFORMAT="%R s wall (%U s user)"
mkdir -p "$OUT"
start=$(date +%s)

[ -f "$OUT/prep/manifest.jsonl" ] || $PY -m eval.prepare esc10 "$DATA/esc10" "$OUT/prep"

# 1. Fine-tuning: test fold 5 (run.fold=5 trains on folds 1-4), the ESC-10 recipe with fewer epochs, a higher lr
#    (from scratch) and batch BATCH; the encoder + head of the epoch chosen on validation is fold5/best.safetensors.
finetune() {   # NAME PRESET EPOCHS [model.* overrides]
    local name=$1 preset=$2 epochs=$3
    shift 3
    [ -f "$OUT/ft_$name/fold5/best.safetensors" ] && return 0
    $PY -m eval.finetune esc10 "$OUT/prep/manifest.jsonl" --random "$preset" "$@" run.fold=5 \
        run.out="$OUT/ft_$name" run.device=cpu run.log_every=4 recipe.epochs="$epochs" recipe.lr="$LR" \
        recipe.batch_size="$BATCH" > "$OUT/ft_$name.log" 2>&1
}
time {
    finetune aum tiny "$AUM_EPOCHS" model.depth="$AUM_DEPTH" & a=$!
    finetune dass dass_tiny "$DASS_EPOCHS" & d=$!
    wait $a; wait $d
}
for name in aum dass; do tail -n 1 "$OUT/ft_$name.log"; done

# 2. Needle in a haystack: PER_CLASS clips of each of the 10 classes of fold 5 (a fixed, seed-0 choice).
niah() {   # NAME
    $PY -m eval.niah "$OUT/ft_$1/fold5/best.safetensors" "$OUT/prep/manifest.jsonl" --lengths $LENGTHS \
        --positions 0 0.5 1 --haystack zeros "babble:$DATA/speech_commands_v001_mini/audio" --snr 10 \
        --modes whole window --per-class "$PER_CLASS" --seed 0 --out "$OUT/niah" > "$OUT/niah_$1.log" 2>&1
}
time {
    niah aum & a=$!
    niah dass & d=$!
    wait $a; wait $d
}
$PY -m eval.results "$OUT/niah/records" --out "$OUT/niah/tables"
if [ -n "$FIGURE" ]; then
    mkdir -p "$(dirname "$FIGURE")"
    cp "$OUT/niah/tables/niah.png" "$FIGURE"
    echo "plot copied to $FIGURE"
fi
echo "niah_demo: $(( $(date +%s) - start )) s in all"
