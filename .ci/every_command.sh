#!/usr/bin/env bash
# Every CLI command once, at toy sizes, against an installed compress3d_lite (no repository needed):
# what CI runs in the environment made from the wheel, outside the clone. Fails on the first error.
# Usage: bash .ci/every_command.sh WORK_DIR     (the commands write under WORK_DIR)
set -euo pipefail
work=${1:?usage: every_command.sh WORK_DIR}
mkdir -p "$work" && cd "$work"
export C3D_FAST=1 HF_HUB_OFFLINE=1

samples=$(python -c "from compress3d_lite.samples import data_samples; print(data_samples())")
echo "shipped samples: $samples"
small=(--views 2 --res 64 --points 512 --occ 1024)

run() {  # run CMD...: print it, time it, fail loudly
    local t0=$SECONDS
    echo "+ $*"
    local rc=0
    "$@" > cmd.log 2>&1 || rc=$?
    [ "$rc" = 0 ] || { cat cmd.log; echo "FAILED (exit $rc): $*"; exit 1; }
    echo "  ok ($((SECONDS - t0)) s)"
}
expect_exit() {  # expect_exit CODE CMD...: the command must exit with CODE
    local want=$1; shift
    echo "+ $* (expect exit $want)"
    set +e; "$@" > cmd.log 2>&1; local got=$?; set -e
    [ "$got" = "$want" ] || { cat cmd.log; echo "FAILED: exit $got, expected $want: $*"; exit 1; }
}

# every module imports (a missing dependency shows here first)
run python -c "
import importlib, pkgutil, compress3d_lite
names = [m.name for m in pkgutil.walk_packages(compress3d_lite.__path__, 'compress3d_lite.')
         if '.data_samples' not in m.name]
for n in names:
    importlib.import_module(n)
print(len(names), 'modules imported')"

run compress3d-lite
run compress3d-lite --version
expect_exit 2 compress3d-lite generate "$samples/toyshapes/images/000003_0.png" -o out/bad --steps 0
run compress3d-lite generate "$samples/toyshapes/images/000003_0.png" "$samples/toyshapes/images/000000_0.png" \
    -o out/generate --steps 5 --res 64
run compress3d-lite reconstruct "$samples/meshes/toy_lamp.glb" -o out/reconstruct.glb --res 48
run compress3d-lite demo --out out/demo --n 1
run compress3d-lite data sample-meshes --out out/meshes
run compress3d-lite data toyshapes --n 6 --out out/toy --workers 1 "${small[@]}"
run compress3d-lite data import out/meshes/crate.obj out/meshes/vertex_color_snowman.ply --out out/imported "${small[@]}"
run compress3d-lite data objaverse --source out/meshes --n 3 --out out/objaverse --workers 1 "${small[@]}"
run compress3d-lite data view out/toy/000000.npz -o out/view.html
printf 'uid,label\n000000,good\n000001,bad\n000002,good\n000003,bad\n000004,good\n000005,bad\n' > labels.csv
run compress3d-lite data quality-filter train --data out/toy --labels labels.csv --out out/quality
run compress3d-lite train ae --preset lite --data out/toy --out out/ae --steps 2 --batch-size 2
run compress3d-lite train embed --preset lite --data out/toy --out out/embed --steps 2 --batch-size 4
run compress3d-lite train prior --preset lite --embed out/embed --out out/prior --steps 2 --batch-size 4
run compress3d-lite train diffusion --preset lite --vae out/ae/model --embed out/embed --data out/toy \
    --out out/unet --steps 2 --batch-size 2
run compress3d-lite train start --run out/unet --steps 3
run compress3d-lite generate "$samples/toyshapes/images/000003_0.png" -o out/generate_start --steps 5 --res 64 \
    --start regression
run compress3d-lite train prior --preset lite --dry-run
run compress3d-lite evaluate ae --n 2 --res 32
run compress3d-lite evaluate embed --n 4
run compress3d-lite evaluate prior --n 4 --steps 5
run compress3d-lite evaluate generate --n 2 --res 32 --steps 3
run compress3d-lite evaluate paper --n 2 --views 1 --view-res 32 --mesh-res 32 --steps 3 --ablations none \
    --out out/paper
for f in out/generate/000003_0.glb out/generate/generate.json out/reconstruct.glb out/demo/index.html \
         out/ae/model/model.safetensors out/unet/unet/model.safetensors out/unet/unet/start/model.safetensors \
         out/generate_start/000003_0.glb out/paper/paper_eval.md; do
    [ -s "$f" ] || { echo "FAILED: $f was not written"; exit 1; }
done
echo "every command ran"
