#!/usr/bin/env bash
# Run THERE (the GPU machine: x86-64, root, no Node, no network), from the repo root, after pack.sh made
# .device/ here and the device tool carried it (README.md beside this file has the exact call):
#   1. unpacks Node and the runtime (dist/, the production node_modules with dawn.node) into /tmp/stagevar-rt
#      (the repo's tree is not touched), installs the Vulkan loader debs when no libvulkan.so.1 is found,
#      points Vulkan at the NVIDIA driver when its ICD file is where that machine keeps it;
#   2. runs, each under `timeout` within one time budget (default 450 s), JSON into $OUT:
#        stagevar info                                                  → info.txt
#        bench --only policies --synthetic 2b --full  (the headline)    → policies.json, policies.log
#        bench --only matmul,attention                                  → kernels.json, kernels.log
#        bench --only infinity --full --profile (per-scale transformer,
#              decoder, per-kernel GPU times)                           → infinity.json, infinity.log
#   3. prints a short summary (summary.txt).
# `run.sh --small` is the dry run on any machine (lavapipe too): the same steps at tiny sizes.
# Options: --small, --budget SECONDS (450), --8b (the policies and infinity runs on Infinity-8B instead of
# 2B), --f16 (the policies run with f16 activations and KV cache instead of the f32 reference path).
set -uo pipefail

small=0
budget=450
family=2b
precision=()
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    --budget) budget=$2; shift ;;
    --8b) family=8b ;;
    --f16) precision=(--activations f16 --cache-dtype f16) ;;
    *) echo "run.sh: unknown option $1 (allowed: --small, --budget SECONDS, --8b, --f16)" >&2; exit 2 ;;
  esac
  shift
done

t0=$(date +%s)
exec 3>&1 # the console, for step lines while a step's stdout goes to a JSON file
left() { echo $((budget - ($(date +%s) - t0))); }
repo=$PWD
dev=$repo/.device
out=${OUT:-/tmp/stagevar-out}
rt=/tmp/stagevar-rt
mkdir -p "$out"
[ -f "$dev/runtime.tar.xz" ] || { echo "run.sh: $dev/runtime.tar.xz is missing: run bench/device/pack.sh here and carry .device" >&2; exit 1; }
cat "$dev/MANIFEST" 2>/dev/null | head -2

# xz may be absent there; Python's lzma is not.
unxz_to_stdout() {
  if command -v xz >/dev/null; then xz -dc "$1"
  else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer, 1 << 20)' "$1"; fi
}

# 1. Node and the runtime.
rm -rf "$rt" && mkdir -p "$rt"
if [ -f "$dev/node.xz" ]; then
  unxz_to_stdout "$dev/node.xz" > "$rt/node" && chmod +x "$rt/node"
  node=$rt/node
else
  node=$(command -v node) || { echo "run.sh: no .device/node.xz and no node on PATH" >&2; exit 1; }
fi
unxz_to_stdout "$dev/runtime.tar.xz" | tar -xf - -C "$rt" || { echo "run.sh: unpacking the runtime failed" >&2; exit 1; }
echo "node $("$node" -v) at $node; runtime in $rt ($(du -sh "$rt" | cut -f1))"

# Vulkan: the loader (only when the machine has none: unpacking over a system's own would replace it).
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  if [ "$(id -u)" = 0 ] && ls "$dev"/gl/*.deb >/dev/null 2>&1; then
    for f in "$dev"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    echo "installed the Vulkan loader and GL vendor libraries from .device/gl"
  else
    echo "run.sh: no libvulkan.so.1 and no way to install one (needs root and .device/gl/*.deb)" >&2
  fi
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ]; then
  export VK_DRIVER_FILES=$nv_icd
  [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] && export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# 2. The runs. Each gets what is left of the budget minus what the later steps need at least.
bench=("$node" "$rt/dist/bench/main.js")
if [ $small = 1 ]; then
  policies=(--synthetic "$family" --width 128 --depth "$([ $family = 2b ] && echo 4 || echo 5)" --heads 2 --vae-ch 32 --vae-blocks 0 --warmup 0 --runs 1)
  infinity=(--family "$family" --width 128 --depth "$([ $family = 2b ] && echo 4 || echo 5)" --heads 2 --size 256 --vae-sizes 256 --profile)
  kernels=(--only matmul)
else
  policies=(--synthetic "$family" --full --warmup 1 --runs 3)
  # --profile: a per-kernel GPU time table (timestamp queries) in infinity.log, for the next optimisation.
  infinity=(--family "$family" --full --profile)
  kernels=(--only matmul,attention)
fi

step() { # name, seconds to keep for later steps, command…
  local name=$1 keep=$2; shift 2
  local limit=$(( $(left) - keep ))
  if [ "$limit" -lt 10 ]; then echo "== $name: skipped, the budget is spent" | tee -a "$out/summary.txt" >&3; return; fi
  echo "== $name (limit ${limit}s): $*" | sed "s|$rt/||g" >&3
  local s=$(date +%s)
  timeout -k 5 "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - s ))s$([ $rc = 124 ] && echo ' (time limit)')" | tee -a "$out/summary.txt" >&3
}

: > "$out/summary.txt"
step info $((budget * 6 / 10)) "$node" "$rt/bin/stagevar.js" info > "$out/info.txt" 2>&1
cat "$out/info.txt"
policy_keep=$((budget / 4))
step policies "$policy_keep" "${bench[@]}" --only policies "${policies[@]}" ${precision[@]+"${precision[@]}"} --max-seconds $(( $(left) - policy_keep - 60 > 30 ? $(left) - policy_keep - 60 : 30 )) --json \
  > "$out/policies.json" 2> >(tee "$out/policies.log" >&2)
step kernels 60 "${bench[@]}" "${kernels[@]}" --json > "$out/kernels.json" 2> "$out/kernels.log"
step infinity 0 "${bench[@]}" --only infinity "${infinity[@]}" --json > "$out/infinity.json" 2> >(tee "$out/infinity.log" >&2)

# 3. Summary: the policy rows (headline), the kernel rows, the Infinity totals.
"$node" - "$out" <<'JS' | tee -a "$out/summary.txt"
const { readFileSync } = require('node:fs');
const dir = process.argv[2];
const read = (f) => { try { const t = readFileSync(`${dir}/${f}`, 'utf8').trim().split('\n').pop(); return t ? JSON.parse(t) : []; } catch { return []; } };
const f = (x, d = 1) => (x === null || x === undefined ? '-' : Number(x).toFixed(d));
const pol = read('policies.json');
console.log(pol.length ? '\npolicies (median ms; speed-up over vanilla):' : '\npolicies: no rows (see policies.log: its per-policy lines survive a time limit)');
for (const r of pol) console.log(`  ${r.shape.padEnd(60)} total ${f(r.ms).padStart(9)} ms ×${f(r.totalSpeedup, 2)}  transformer ${f(r.transformerMs).padStart(9)} ms ×${f(r.speedup, 2)}  decode ${f(r.decodeMs).padStart(8)} ms  PSNR ${f(r.psnr)} dB`);
const ker = read('kernels.json');
if (ker.length) console.log('\nkernels:');
for (const r of ker) console.log(`  ${r.kernel.padEnd(10)} ${r.shape.padEnd(34)} ${r.dtype.padEnd(8)} ${f(r.ms, 3).padStart(9)} ms ${f(r.gflops, 0).padStart(7)} GFLOP/s ${f(r.gbps, 0).padStart(6)} GB/s`);
const inf = read('infinity.json');
if (inf.length) console.log('\ninfinity (transformer alone, random weights):');
for (const r of inf) if (r.note !== undefined || /^(load|begin|all)/.test(r.shape) || r.kernel === 'vae-decode') console.log(`  ${r.shape.padEnd(34)} ${r.note ?? `${f(r.ms).padStart(9)} ms ${f(r.gflops, 0).padStart(7)} GFLOP/s`}`);
JS
echo "run.sh: done in $(( $(date +%s) - t0 ))s; files in $out: $(ls "$out" | tr '\n' ' ')"
