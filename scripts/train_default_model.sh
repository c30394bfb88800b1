#!/usr/bin/env bash
# Trains the packaged default T1<->T2 model on ../shared/data/brain_t1t2 (unpaired use of two patients),
# holding out BraTS-GLI-00001-000 for validation, then packages it (fp16) into medsynth/models/.
# usage: scripts/train_default_model.sh RUN_DIR [extra medsynth-train options, e.g. --device cuda --steps N]
set -euo pipefail
# one thread per process: two threads on two busy cores run many times slower
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run=${1:?usage: $0 RUN_DIR [options]}; shift
data=${MEDSYNTH_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}/brain_t1t2
medsynth-train \
  --t1 "$data/AURORA_sample/t1.nii.gz" "$data/TCGA-DU-7294/t1.nii.gz" \
  --t2 "$data/AURORA_sample/t2.nii.gz" "$data/TCGA-DU-7294/t2.nii.gz" \
  --val-t1 "$data/BraTS-GLI-00001-000/t1.nii.gz" --val-t2 "$data/BraTS-GLI-00001-000/t2.nii.gz" \
  --out "$run" --generator resnet6 --ngf 16 --ndf 16 --size 128 --batch-size 1 --upsample nearest \
  --lambda-identity 0 --steps 2200 --decay-steps 1800 \
  --sample-every 400 --checkpoint-every 200 --val-every 500 --log-every 20 "$@"
python "$(dirname "$0")/package_model.py" "$run/model_best.pt" --fallback "$run/model.pt"
