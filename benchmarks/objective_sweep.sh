#!/bin/bash
# The validation sweep of the objective x the training-timestep bias (docs/stages.md, "Stage 4"):
# the course UNet trained 600 steps from scratch per row, then measured on 56 validation objects.
#     bash benchmarks/objective_sweep.sh      # ~10 min per row on 2 CPU cores; rows already done are skipped
#     ROWS="flow_ln1 flow_ln15" bash benchmarks/objective_sweep.sh     # only these rows
# Needs the 2048 training objects: compress3d-lite data toyshapes --n 2048 --out runs/toy2048 --views 8 --res 64 --seed 0
set -eu
CK=data_samples/checkpoints
S=${S:-runs/sweep22}
STEPS=${STEPS:-600}
ROWS=${ROWS:-}
NOTES=benchmarks/results/objective_sweep_val.json
run() {  # name, train flags, sampler[, note]
  name=$1; flags=$2; sampler=$3; out=$S/$name; p=$S/pipe_$name
  [ -z "$ROWS" ] || [[ " $ROWS " == *" $name "* ]] || return 0
  mkdir -p "$out"
  [ -f "$S/latents.safetensors" ] && [ ! -f "$out/latents.safetensors" ] && cp "$S/latents.safetensors" "$out/"
  [ -f "$out/unet/config.json" ] || compress3d-lite train diffusion --preset course --vae $CK/vae_course \
      --embed $CK/embed_course --data runs/toy2048 --out "$out" --steps "$STEPS" \
      $([ -d "$out/checkpoint" ] && echo --resume) $flags
  [ -f "$S/latents.safetensors" ] || cp "$out/latents.safetensors" "$S/"  # the next rows skip the encoding
  rm -rf "$p" && mkdir -p "$p/unet"
  for k in vae embed prior; do ln -s "$PWD/$CK/${k}_course" "$p/$k"; done
  # raw weights: an EMA of decay 0.999 over 600 steps still holds about half of the first steps' weights
  for f in config.json model.safetensors; do ln -s "$PWD/$out/unet/$f" "$p/unet/$f"; done
  compress3d-lite evaluate generate --pipeline "$p" --split val --n 56 --guidance-image 3 --guidance-shape 2 \
      --steps 20 --sampler "$sampler" --json "$S/$name.json" --overwrite
  # the row joins the stored table (replacing a row of the same name), with its training time
  python - "$S/$name.json" "$name" "${4:-$flags}" "$out/log.jsonl" "$NOTES" <<'PY'
import json, sys
report, name, note, log, table = sys.argv[1:]
rep, doc = json.load(open(report)), json.load(open(table))
row = {"name": name, "note": note, "settings": rep["settings"], "with_prior": rep["with_prior"],
       "without_prior": rep["without_prior"]}
doc["rows"] = [r for r in doc["rows"] if r["name"] != name] + [row]
doc["train_seconds"][name] = round(json.loads(open(log).read().splitlines()[-1])["seconds"])
open(table, "w").write(json.dumps(doc, indent=1) + "\n")
PY
}
run ddpm_uniform "--objective ddpm --timesteps uniform" dpm  # the objective of the course UNet before
run flow_uniform "--objective rectified_flow --timesteps uniform" euler
run flow_ln0 "--objective rectified_flow --timesteps logit_normal --logit-mean 0" euler
run flow_ln1 "--objective rectified_flow --timesteps logit_normal --logit-mean 1" euler
run flow_ln05 "--objective rectified_flow --timesteps logit_normal --logit-mean 0.5" euler
run flow_ln15 "--objective rectified_flow --timesteps logit_normal --logit-mean 1.5" euler \
    "rectified flow, logit-normal t, mean 1.5"
# the near-surface occupancy loss on the decoded clean estimate (stages/unet.py, SurfaceObjective)
run flow_ln1_surface "--objective rectified_flow --timesteps logit_normal --logit-mean 1 --surface-weight 1" euler \
    "rectified flow, logit-normal t, mean 1, + surface loss"
