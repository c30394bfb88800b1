#!/usr/bin/env bash
# Scores a T1<->T2 model on the held-out patient(s) of ../shared/data/brain_t1t2, both directions, axial and fused,
# against the fair classical baseline (the training histograms the model carries) and the oracle one (the
# reference's own histogram), with medsynth-eval (brain mask: source and reference both foreground).
# usage: scripts/eval_default_model.sh OUT_DIR [MODEL] [CASE ...]   (default: packaged model, BraTS-GLI-00001-000)
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [MODEL] [CASE ...]}; model=${2:-}; shift $(( $# > 1 ? 2 : 1 ))
cases=("$@"); [ ${#cases[@]} -gt 0 ] || cases=(BraTS-GLI-00001-000)
data=${MEDSYNTH_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}/brain_t1t2
for dir in t1-to-t2 t2-to-t1; do
  src=${dir%%-to-*}; dst=${dir##*-to-}
  for axis in axial all; do
    for c in "${cases[@]}"; do
      medsynth-convert "$data/$c/$src.nii.gz" "$out/pred_${dir}_${axis}/${c}_${dst}.nii.gz" \
        ${model:+--model "$model"} --direction "$dir" --axis "$axis" --progress none --overwrite
    done
    medsynth-eval --pred "$out/pred_${dir}_${axis}" \
      --ref $(for c in "${cases[@]}"; do echo "$data/$c/$dst.nii.gz"; done) \
      --source $(for c in "${cases[@]}"; do echo "$data/$c/$src.nii.gz"; done) \
      --model "${model:-default}" --direction "$dir" \
      --out "$out/report_${dir}_${axis}" | tee "$out/table_${dir}_${axis}.txt"
  done
done
