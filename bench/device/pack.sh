#!/usr/bin/env bash
# Run HERE (the machine with Node and node_modules), from anywhere in the repo: packs what the GPU machine
# lacks into the git-ignored folder .device/, which the device tool carries as one path (see README.md):
#   .device/node.xz            this Node binary (process.execPath), xz-compressed
#   .device/runtime.tar.xz     dist/ (built now), bin/, package.json and the production node_modules that
#                              dist imports at run time: webgpu (its JS + the linux-x64 dawn.node only),
#                              commander, entities, fast-png (+ fflate, iobuffer), @huggingface/tokenizers
#   .device/gl/*.deb           the Vulkan loader and GL vendor libraries (the device README's .gl recipe)
#   .device/MANIFEST           what was packed, from which commit, with sizes and sha256
# The device tool carries at most 64 MiB of working tree + carried paths; this prints the total.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
root=$PWD
dev=.device
if ! git check-ignore -q "$dev/x"; then echo "/$dev/" >> .git/info/exclude; fi
rm -rf "$dev"
mkdir -p "$dev/gl"

[ "$(uname -m)" = x86_64 ] || { echo "pack.sh: this machine is $(uname -m); the GPU machine is x86-64 (pack on x86-64)" >&2; exit 1; }
node_bin=$(node -p process.execPath)
echo "pack: node $(node -v) from $node_bin"
npx tsc -p tsconfig.json

# The production dependency tree, minus what is only types or build tooling.
deps=$(npm ls --omit=dev --all --parseable 2>/dev/null | sed "s|^$root/||" | grep '^node_modules/' | sort -u)
files=(dist bin package.json)
for d in $deps; do
  case "$d" in
    node_modules/@webgpu/types|node_modules/debug|node_modules/ms) continue ;;  # types / webgpu's build scripts
    node_modules/webgpu)
      # Only what `import 'webgpu'` loads: index.js picks dist/<platform>-<arch>/dawn.node.
      files+=(node_modules/webgpu/package.json node_modules/webgpu/index.js node_modules/webgpu/dist/linux-x64/dawn.node) ;;
    *) files+=("$d") ;;
  esac
done
for f in "${files[@]}"; do [ -e "$f" ] || { echo "pack.sh: $f is missing (npm ci first)" >&2; exit 1; }; done
echo "pack: runtime = ${files[*]}"

xz -T0 -6 -c "$node_bin" > "$dev/node.xz" & p_node=$!
tar -cf - --exclude='*.map' --exclude='*.d.ts' "${files[@]}" | xz -T0 -9 > "$dev/runtime.tar.xz" & p_rt=$!
(
  # The device README's recipe: amd64 package lists in /tmp, then the loader debs (no install here).
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  apt-get $o update -qq >/dev/null
  cd "$dev/gl" && apt-get $o download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 2>/dev/null
) & p_gl=$!
for p in $p_node $p_rt $p_gl; do wait "$p" || { echo "pack.sh: packing failed (see above)" >&2; exit 1; }; done
[ -n "$(ls "$dev"/gl/libvulkan1_*.deb 2>/dev/null)" ] || { echo "pack.sh: the libvulkan1 .deb was not downloaded" >&2; exit 1; }

{
  echo "packed $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "node $(node -v) $(uname -m)"
  (cd "$dev" && sha256sum node.xz runtime.tar.xz gl/*.deb)
} > "$dev/MANIFEST"

echo "pack: sizes"
du -b "$dev"/node.xz "$dev"/runtime.tar.xz "$dev"/gl/*.deb | awk '{printf "  %8.2f MiB  %s\n", $1/1048576, $2}'
carried=$(du -sb "$dev" | cut -f1)
# What travels anyway: tracked files and untracked files git does not ignore.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((carried + tree))
awk -v c="$carried" -v t="$tree" 'BEGIN { printf "pack: .device %.2f MiB + working tree %.2f MiB = %.2f MiB (limit 64 MiB)\n", c/1048576, t/1048576, (c+t)/1048576 }'
if [ "$total" -ge $((64 * 1048576)) ]; then echo "pack.sh: over the device tool's 64 MiB" >&2; exit 1; fi
