#!/usr/bin/env bash
# Stage what a GPU check needs that the device machine lacks, cut into pieces that each fit one device call.
#
# Run here, from the repository root, with network access to PyPI:
#     bash benchmarks/gpu/stage.sh
# It downloads the wheels the device image does not have (onnxruntime-gpu for CUDA 13, polygraphy,
# onnxconverter-common; Python 3.12, x86-64), checks them against benchmarks/gpu/wheels.sha256, packs them with the
# DAVIS test sequences (../shared/data/vos: the device receives only the repository) into one tar stream and splits
# it into .gpu-carry/part-1 ... part-K (git-ignored), each at most PIECE_MIB MiB, so that a piece plus the working
# tree stays under the device tool's 64 MiB per call. It prints the calls to make (docs/benchmarks.md#gpu-runs).
set -euo pipefail
cd "$(dirname "$0")/../.."

PIECE_MIB=${PIECE_MIB:-56}
SHARED_VOS=${SHARED_VOS:-../shared/data/vos}
CARRY=.gpu-carry
STAGING=$(mktemp -d)
PIECES=$(mktemp -d)
trap 'rm -rf "$STAGING" "$PIECES"' EXIT

mkdir -p "$STAGING/wheels"
requirements=$(awk '{print $2}' benchmarks/gpu/wheels.sha256 | sed -E 's/^([A-Za-z0-9_]+)-([^-]+)-.*/\1==\2/; s/_/-/g')
# The device runs Python 3.12 on x86-64 (see the device tool's KINDS.md); the wheels are for it, not for here.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$STAGING/wheels" $requirements
(cd "$STAGING/wheels" && sha256sum --quiet -c "$OLDPWD/benchmarks/gpu/wheels.sha256")

if [ -d "$SHARED_VOS" ]; then
    mkdir -p "$STAGING/vos" && cp -r "$SHARED_VOS"/. "$STAGING/vos/"
else
    echo "note: $SHARED_VOS not found; the device's parity tests will skip the real sequences" >&2
fi

rm -rf "$CARRY" && mkdir -p "$CARRY"
tar -C "$STAGING" -cf - . | split -b "${PIECE_MIB}M" -d -a 2 - "$PIECES/piece-"
count=0
for piece in "$PIECES"/piece-*; do
    count=$((count + 1))
    mkdir -p "$CARRY/part-$count"
    mv "$piece" "$CARRY/part-$count/piece"
done
# the sums travel with the last piece: the device checks the whole set once it has them
(cd "$CARRY" && sha256sum part-*/piece > "part-$count/SHA256SUMS")

echo "staged $count pieces in $CARRY ($(du -sh "$CARRY" | cut -f1)); device calls, back to back (a machine stays"
echo "warm for 30 s between calls):"
for i in $(seq 1 $((count - 1))); do
    echo "  run(command=\"ls -l $CARRY/part-*\", carry=[\"$CARRY/part-$i\"])"
done
echo "  run(command=\"bash benchmarks/gpu/device_check.sh\", carry=[\"$CARRY/part-$count\"], timeout_s=540)"
echo "  run(command=\"STEPS=bench bash benchmarks/gpu/device_check.sh\", timeout_s=480)"
