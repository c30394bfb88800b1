#!/usr/bin/env bash
# Trains the packaged default T1<->T2 model on ../shared/data/brain_t1t2 with the CPU recipe chosen by the
# leave-one-out study (scripts/study_cpu.py, scripts/results/study_cpu.md): registered pairs (--paired), a
# residual correction of the inverted histogram match, smoothed by 0.7 px, with intensity augmentation into its base
# and synthetic lesions (--recipe cpu --paired), on every core with bf16 where the
# CPU has it. Two patients and a healthy pair (the MNI avg152 T1/T2 templates, skull-stripped, 1 mm, made
# thick-slice over 5 mm slabs along S-I as the patients' scans are: scripts/make_template_pair.py --slab-mm 5; the
# sixth and seventh passes of the study) train it for 2,052 steps; BraTS-GLI-00001-000, the packaged sample, is held
# out and validates it. The T2 -> T1 generator comes from a second run of the same recipe with four crops per step
# (--batch-size 4; the twenty-fourth pass, scripts/results/study_directions.md), RUN_DIR_batch4.
# Then both are packaged (fp16) into medsynth/models/ as one model.
# usage: scripts/train_default_model.sh RUN_DIR [extra medsynth-train options, e.g. --steps N --device cuda]
set -euo pipefail
run=${1:?usage: $0 RUN_DIR [options]}; shift
run=${run%/}  # RUN_DIR/ would put RUN_DIR_batch4 inside the first run's folder
shared=${MEDSYNTH_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
data=$shared/brain_t1t2
# beside the run folder, not in it (medsynth-train refuses a run folder that is not empty unless --resume); the
# folder is named mni152_slab5 (as in the study), which the packaged model records as its training case
pair="$(python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$run")_extra/mni152_slab5"
python "$(dirname "$0")/make_template_pair.py" --templates "$shared/templates_2mm" --slab-mm 5 --out "$pair"
common=(
  --t1 "$data/AURORA_sample/t1.nii.gz" "$data/TCGA-DU-7294/t1.nii.gz" "$pair/t1.nii.gz"
  --t2 "$data/AURORA_sample/t2.nii.gz" "$data/TCGA-DU-7294/t2.nii.gz" "$pair/t2.nii.gz"
  --val-t1 "$data/BraTS-GLI-00001-000/t1.nii.gz" --val-t2 "$data/BraTS-GLI-00001-000/t2.nii.gz"
  --paired --recipe cpu --steps 2052 --sample-every 1026 --checkpoint-every 500 --val-every 513 --log-every 50
)
# a run that finished is kept (rerunning the script after a failure of the second goes on from there); the second
# run's --batch-size 4 comes after the user's options, so that it holds whatever they give
[ -f "$run/model.pt" ] || medsynth-train "${common[@]}" --out "$run" "$@"
[ -f "${run}_batch4/model.pt" ] || medsynth-train "${common[@]}" "$@" --batch-size 4 --out "${run}_batch4"
# the final models, not the best validation rounds: choosing on the held-out patient would make its figures a best
# case; T1 -> T2 from the first run, T2 -> T1 from the second
python "$(dirname "$0")/package_model.py" "$run/model.pt" --b-to-a "${run}_batch4/model.pt"
