#!/bin/bash
# The validation sweep of the objective x the training-timestep bias (docs/stages.md, "Stage 4"):
# the course UNet trained 600 steps from scratch per row, then measured on 56 validation objects.
#     bash benchmarks/objective_sweep.sh      # ~10 min per row on 2 CPU cores; rows already done are skipped
# Needs the 2048 training objects: compress3d-lite data toyshapes --n 2048 --out runs/toy2048 --views 8 --res 64 --seed 0
set -eu
CK=data_samples/checkpoints
S=${S:-runs/sweep22}
STEPS=${STEPS:-600}
run() {  # name, train flags, sampler
  name=$1; flags=$2; sampler=$3; out=$S/$name; p=$S/pipe_$name
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
}
run ddpm_uniform "--objective ddpm --timesteps uniform" dpm  # the objective of the course UNet before
run flow_uniform "--objective rectified_flow --timesteps uniform" euler
run flow_ln0 "--objective rectified_flow --timesteps logit_normal --logit-mean 0" euler
run flow_ln1 "--objective rectified_flow --timesteps logit_normal --logit-mean 1" euler
run flow_ln05 "--objective rectified_flow --timesteps logit_normal --logit-mean 0.5" euler
