#!/usr/bin/env bash
# The GPU check, run on the device machine from the repository root after benchmarks/gpu/stage.sh's pieces have
# been carried there (docs/benchmarks.md#gpu-runs):
#     bash benchmarks/gpu/device_check.sh                  # install env tests: the call that carries the last piece
#     STEPS=bench bash benchmarks/gpu/device_check.sh      # the next call, on the still-warm machine
# (Two calls, not one: each fits the device tool's 10 minutes, and each leaves at most 8 files under $OUT, as many
# as the tool brings back.)
# Steps, each with its own time limit so that one failure does not eat the call:
#   install  reassemble the pieces, check their hashes, install the wheels into .gpu-site/ (once per machine), make
#            `kmnrt` importable from this tree and ../shared/data/vos point at the carried sequences
#   env      GPU, driver, versions, ONNX Runtime's providers (a CUDA session is opened), TensorRT presence
#   tests    the cuda- and tensorrt-marked tests: GPU backends against the reference tracker on the real sequences
#   bench    kmnrt bench on the paper configuration at 480x864: fp32 (reference, torch, onnxruntime-cuda,
#            tensorrt if present) and fp16 (onnxruntime-cuda, tensorrt if present)
# Everything is logged under $OUT (the device tool fetches it) or out/gpu-check; a summary is printed last, and the
# exit status is 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-out/gpu-check}
STEPS=${STEPS:-install env tests}
PY=${PYTHON:-python3}
CARRY=${GPU_CARRY:-.gpu-carry}
SITE=${GPU_SITE:-$PWD/.gpu-site}
mkdir -p "$OUT" "$SITE"
export PYTHONPATH="$SITE/src:$SITE/packages${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OUT PY CARRY SITE
SUMMARY=()
FAILED=0

note() { SUMMARY+=("$1"); echo ">>> $1"; }
run_step() {  # run_step NAME SECONDS FUNCTION: logged to $OUT/NAME.log, its status into the summary
    local name=$1 limit=$2 function=$3
    echo "=== $name (limit ${limit}s, $(date -u +%T))"
    local started=$SECONDS
    timeout "$limit" bash -c "$function" 2>&1 | tee "$OUT/$name.log"
    local status=${PIPESTATUS[0]}
    note "$name: $([ "$status" = 0 ] && echo ok || echo "FAILED (exit $status)") in $((SECONDS - started)) s"
    [ "$status" = 0 ] || FAILED=1
    return "$status"
}
wants() { [[ " $STEPS " == *" $1 "* ]]; }

install() {
    if [ -f "$SITE/.installed" ]; then echo "already installed on this machine"; return 0; fi
    local sums
    sums=$(ls "$CARRY"/part-*/SHA256SUMS 2>/dev/null | head -1)
    [ -n "$sums" ] || { echo "no $CARRY/part-*/SHA256SUMS: carry every piece first (bash benchmarks/gpu/stage.sh)"; return 1; }
    (cd "$CARRY" && sha256sum -c "${sums#"$CARRY"/}") || { echo "a piece is missing or damaged: carry it again"; return 1; }
    rm -rf "$SITE/staged" && mkdir -p "$SITE/staged"
    printf '%s\n' "$CARRY"/part-*/piece | sort -V | xargs cat | tar -x -C "$SITE/staged" || return 1
    (cd "$SITE/staged/wheels" && sha256sum -c "$OLDPWD/benchmarks/gpu/wheels.sha256") || return 1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE/packages" \
        "$SITE/staged/wheels/"*.whl || return 1
    # kmnrt's subpackages live in top-level folders (pyproject's package-dir): a tree of links imports the same.
    rm -rf "$SITE/src" && mkdir -p "$SITE/src/kmnrt"
    for entry in src/kmnrt/*; do ln -s "$PWD/$entry" "$SITE/src/kmnrt/"; done
    for sub in model training export runtime benchmarks; do ln -s "$PWD/$sub" "$SITE/src/kmnrt/$sub"; done
    if [ -d "$SITE/staged/vos" ] && [ ! -e ../shared/data/vos ]; then
        mkdir -p ../shared/data && ln -s "$SITE/staged/vos" ../shared/data/vos
    fi
    touch "$SITE/.installed"
}

environment() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$PY" - <<'EOF'
import importlib.util, sys
import numpy, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}")
print(f"GPU: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}")
import onnx, onnxruntime as ort
from onnx import TensorProto, helper
print(f"onnxruntime {ort.__version__} from {ort.__file__}; providers {ort.get_available_providers()}")
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
if "CUDAExecutionProvider" not in session.get_providers():
    sys.exit(f"ONNX Runtime fell back to {session.get_providers()}: its CUDA provider did not load (see above)")
print(f"a CUDA session opened with providers {session.get_providers()}")
print("tensorrt:", importlib.util.find_spec("tensorrt") and __import__("tensorrt").__version__)
import kmnrt
print(f"kmnrt from {kmnrt.__file__}")
EOF
    local status=$?
    ldconfig -p | grep -c nvinfer | sed 's/^/libnvinfer entries in ldconfig: /'
    return $status
}

gpu_tests() {
    "$PY" -m pytest -q -p no:cacheprovider -m "cuda or tensorrt" -rs --junitxml="$OUT/tests.xml" \
        tests/runtime/test_backends.py tests/runtime/test_parity.py tests/export/test_tensorrt.py \
        tests/model/test_reference.py
}

has_tensorrt() { "$PY" -c "import tensorrt" 2>/dev/null; }

bench() {
    local engine=onnx gpu_backends=onnxruntime-cuda
    if has_tensorrt; then engine=tensorrt gpu_backends=onnxruntime-cuda,tensorrt; fi
    local common=(--memory 1,5,10,20 --objects 1,3 --frames 20 --warmup 5 --no-progress)
    for precision in fp32 fp16; do
        # unverified: the tests step checked the GPU backends against the reference; this bundle is for timing
        "$PY" -m kmnrt.cli export --config paper --height 480 --width 864 --max-memory 20 --precision $precision \
            --engine $engine --out engines/paper-gpu-$precision --force --no-verify || return 1
    done
    "$PY" -m kmnrt.cli bench --bundle engines/paper-gpu-fp32 --backends reference,torch,$gpu_backends \
        --device cuda --sessions 1,2,4 --throughput-at 1,20 "${common[@]}" --json "$OUT/gpu-paper-fp32.json" || return 1
    "$PY" -m kmnrt.cli bench --bundle engines/paper-gpu-fp16 --backends reference,$gpu_backends --device cuda \
        "${common[@]}" --json "$OUT/gpu-paper-fp16.json"
}

export -f install environment gpu_tests has_tensorrt bench
wants install && { run_step install 150 install || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }; }
wants env && run_step env 60 environment
wants tests && run_step tests 270 gpu_tests
wants bench && run_step bench 420 bench
echo; echo "=== summary"; printf '%s\n' "${SUMMARY[@]}"
[ -f "$OUT/tests.xml" ] && grep -o 'errors="[0-9]*" failures="[0-9]*" skipped="[0-9]*" tests="[0-9]*"' "$OUT/tests.xml" \
    | head -1 | sed 's/^/GPU tests: /'   # skipped ones name their reason in tests.log
for report in "$OUT"/gpu-paper-*.md; do
    [ -f "$report" ] && echo "$report" && grep -E '^\| (reference|torch|onnxruntime-cuda|tensorrt) \| 1 \| 20 ' "$report"
done
exit "$FAILED"
