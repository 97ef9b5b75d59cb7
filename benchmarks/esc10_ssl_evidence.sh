#!/usr/bin/env bash
# Does our pretraining help? ESC-10 5-fold linear probe of a tiny AuM pretrained (MAE) on audio DISJOINT from
# ESC-10 (the 320 non-ESC-10 clips of esc50_fold4 + the Speech Commands sample), against its randomly
# initialised twin. Needs ../shared/data. Usage: benchmarks/esc10_ssl_evidence.sh [OUT] [MAX_STEPS]
#
# The recorded run used MAX_STEPS=3000 and was stopped with SIGTERM after 185 steps (about 20 CPU-minutes on
# a shared 2-core machine); the engine writes a checkpoint and exports the encoder when it is stopped, and
# rerunning the same command resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data
OUT=${1:-runs/esc10_evidence}
STEPS=${2:-3000}
mkdir -p "$OUT"
python - "$DATA" "$OUT/pretrain_manifest.csv" <<'PY'
import csv, sys
data, out = sys.argv[1], sys.argv[2]
rows = [f"{data}/esc50_fold4/{r['filename']}" for r in csv.DictReader(open(f"{data}/esc50_fold4/meta.csv"))
        if r["esc10"] != "True"]
rows += [f"{data}/speech_commands_v001_mini/{r['filename']}"
         for r in csv.DictReader(open(f"{data}/speech_commands_v001_mini/meta.csv"))]
with open(out, "w") as fh:
    fh.write("path\n" + "\n".join(rows) + "\n")
print(f"{len(rows)} pretraining clips, none from ESC-10")
PY
OMP_NUM_THREADS=1 python -m pretrain data.source="$OUT/pretrain_manifest.csv" objective.name=mae \
  data.crop_frames=512 engine.out_dir="$OUT/mae" engine.max_steps="$STEPS" engine.batch_size=16 \
  engine.lr=5e-4 engine.warmup_steps=50 engine.ckpt_every=50 engine.image_every=200
python -m eval.probe esc10 "$DATA/esc10" --checkpoint "$OUT/mae/encoder.safetensors" --init ssl \
  --model-name tiny --threads 1 --out "$OUT/records"
python -m eval.probe esc10 "$DATA/esc10" --random tiny --model-name tiny --threads 1 --out "$OUT/records"
python -m eval.results "$OUT/records"
