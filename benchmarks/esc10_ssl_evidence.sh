#!/usr/bin/env bash
# Does our pretraining help? Tiny AuM encoders pretrained (MAE and SSAST, each within 60 CPU-minutes on one
# thread) on audio DISJOINT from ESC-10 (the 320 non-ESC-10 clips of esc50_fold4 + the Speech Commands
# sample), against their randomly initialised twin, on ESC-10 (5 folds): our linear probe, and hear-eval-kit's
# MLP protocol (default grid) - the one in which a fixed random projection of the log-spectrogram scores
# 0.810 +- 0.010. Needs ../shared/data; the HEAR environment is built on first use (hear_api.setup_env).
#
# Usage: benchmarks/esc10_ssl_evidence.sh [OUT]
# Env: MAE_STEPS (450), SSAST_STEPS (320), HEAR_OPTIONS (JSON for hear_api.load_model).
# The HEAR layer of each encoder is chosen by hear_api.select_layer on the 40 ESC-50 classes outside ESC-10
# (esc50_fold4, 320 labelled clips), never on ESC-10 itself.
# Each stage resumes or is skipped when its output exists, so rerunning the command continues a stopped run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$(cd ../shared/data && pwd)    # absolute: manifest paths resolve against the manifest's folder
OUT=${1:-runs/esc10_evidence}
MAE_STEPS=${MAE_STEPS:-450}
SSAST_STEPS=${SSAST_STEPS:-320}
HEAR_OPTIONS=${HEAR_OPTIONS:-'{"combine": "concat", "scene": "mean+max", "pad_to_window": false}'}
TIMEFORMAT="cpu: %U s user + %S s system, wall %R s"
export OMP_NUM_THREADS=1
mkdir -p "$OUT"

python - "$DATA" "$OUT" <<'PY'
import csv, sys
data, out = sys.argv[1], sys.argv[2]
esc50 = [r for r in csv.DictReader(open(f"{data}/esc50_fold4/meta.csv")) if r["esc10"] != "True"]
rows = [f"{data}/esc50_fold4/{r['filename']}" for r in esc50]
rows += [f"{data}/speech_commands_v001_mini/{r['filename']}"
         for r in csv.DictReader(open(f"{data}/speech_commands_v001_mini/meta.csv"))]
with open(f"{out}/pretrain_manifest.csv", "w") as fh:
    fh.write("path\n" + "\n".join(rows) + "\n")
with open(f"{out}/select_manifest.csv", "w") as fh:
    fh.write("path,label\n" + "".join(f"{data}/esc50_fold4/{r['filename']},{r['label']}\n" for r in esc50))
print(f"{len(rows)} pretraining clips, none from ESC-10; {len(esc50)} labelled clips for the layer choice")
PY

# 1. Pretraining: 512-frame crops, AdamW + cosine; MAE batch 16 (75 % of patches dropped, light decoder),
#    SSAST batch 8 (mask tokens in place; about 3x the cost per clip). `time` prints the CPU seconds used.
time python -m pretrain data.source="$OUT/pretrain_manifest.csv" objective.name=mae data.crop_frames=512 \
  engine.out_dir="$OUT/mae" engine.max_steps="$MAE_STEPS" engine.batch_size=16 engine.lr=5e-4 \
  engine.warmup_steps=40 engine.ckpt_every=50 engine.image_every=150
time python -m pretrain data.source="$OUT/pretrain_manifest.csv" objective.name=ssast data.crop_frames=512 \
  engine.out_dir="$OUT/ssast" engine.max_steps="$SSAST_STEPS" engine.batch_size=8 engine.lr=2e-4 \
  engine.warmup_steps=20 engine.ckpt_every=20

# 2. Our 5-fold linear probe (mean of the tokens of the padded 1024-frame input).
for obj in mae ssast; do
  python -m eval.probe esc10 "$DATA/esc10" --checkpoint "$OUT/$obj/encoder.safetensors" --init ssl \
    --model-name "tiny-$obj" --threads 1 --out "$OUT/records"
done
python -m eval.probe esc10 "$DATA/esc10" --random tiny --model-name tiny --threads 1 --out "$OUT/records"

# 3. hear-eval-kit (default grid) on ESC-10 as a 5-fold HEAR scene task, each encoder read at the layer
#    chosen on the non-ESC-10 ESC-50 classes.
[ -d "$OUT/hear_tasks/esc10" ] || python -m hear_api.tasks esc10 "$DATA/esc10" "$OUT/hear_tasks"
for enc in mae ssast random; do
  ckpt=$([ "$enc" = random ] && echo random || echo "$OUT/$enc/encoder.safetensors")
  init=$([ "$enc" = random ] && echo scratch || echo ssl)
  name=$([ "$enc" = random ] && echo tiny || echo "tiny-$enc")
  [ -f "$OUT/layer_$enc.json" ] || python -m hear_api.select_layer "$ckpt" "$OUT/select_manifest.csv" \
    --model-options "$HEAR_OPTIONS" --threads 1 --out "$OUT/layer_$enc.json"
  options=$(python -c 'import json, sys; o = json.loads(sys.argv[1]); o["layer"] = json.load(open(sys.argv[2]))["best"]
print(json.dumps(o))' "$HEAR_OPTIONS" "$OUT/layer_$enc.json")
  [ -f "$OUT/hear_$enc/summary.json" ] || python -m hear_api.evaluate "$ckpt" --tasks "$OUT/hear_tasks" \
    --task esc10 --out "$OUT/hear_$enc" --grid default --threads 1 --skip-validate --setup --init "$init" \
    --model-name "$name" --model-options "$options"
  cp "$OUT/hear_$enc"/records/*.json "$OUT/records/"
done

python -m eval.results "$OUT/records"         # tables (probe and hear) in $OUT/records/tables
