#!/usr/bin/env bash
# The GPU check of issue 15, for a short GPU window (under 8 minutes, one line per figure).
#
#   benchmarks/gpu_check.sh                  on the GPU machine, from anywhere in the repository
#   benchmarks/gpu_check.sh --fetch-wheels   on a machine with network: the wheels the GPU machine
#                                            lacks go to .whl/ (add /.whl/ to .git/info/exclude and
#                                            carry .whl to the GPU machine)
#
# Steps: install the gpu and test extras (pip install -e .[gpu,test]; offline it falls back to the
# packages already there plus the wheels of .whl/, and to PYTHONPATH=<repo>), then
#   1. pytest -m gpu (cupy equals numpy to 1e-4: expectation_batch, reconstruct);
#   2. the E-step's coarse products next to cuBLAS for the same shapes (benchmarks/estep_gpu.py);
#   3. the tiny tutorial: VDAM initial model (100 mini-batches) and 3D auto-refine with --gpu, timed.
# A step whose packages are missing says so in one line and the next one runs. Environment:
# PYTHON (default python3), GPU_CHECK_BUDGET (seconds, default 470), GPU_IDS (--gpu value, default
# all visible GPUs).
set -u
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-470}
GPU_IDS=${GPU_IDS:-}
START=$(date +%s)

# wheels the GPU machines' image lacks (KINDS.md lists what it has: numpy, scipy, pandas, numba,
# cupy-cuda13x, pyarrow, pytest, pytest-timeout, tqdm, matplotlib, nvidia-ml-py, ...)
WHEELS="mrcfile starfile healpy astropy pyerfa astropy-iers-data dask distributed dask-cuda tornado zict tblib
locket partd importlib-metadata array-api-compat array-api-strict"

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    for w in $WHEELS; do
        $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$w" || echo "gpu_check: could not fetch $w"
    done
    du -sh .whl
    exit 0
fi

say() { echo "gpu_check: $*"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
elapsed() { echo $(( $(date +%s) - $1 )); }

# ---- install ------------------------------------------------------------------------------------
if timeout 90 "$PY" -m pip install -q --disable-pip-version-check -e ".[gpu,test]" >/tmp/gpu_check_pip.log 2>&1; then
    say "installed: pip install -e .[gpu,test]"
else
    say "pip install -e .[gpu,test] failed (offline?): using the installed packages, .whl/ and PYTHONPATH=$REPO"
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu_check_site .whl/*.whl >/tmp/gpu_check_whl.log 2>&1 \
            && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH} \
            && say "installed the wheels of .whl/ into /tmp/gpu_check_site"
    fi
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 SUBTOMO_BACKEND=

missing() {   # the modules of "$@" that do not import
    "$PY" - "$@" <<'EOF'
import importlib, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
gpu_line=$("$PY" -c "import cupy; n = cupy.cuda.runtime.getDeviceCount(); p = cupy.cuda.runtime.getDeviceProperties(0); \
print(f'{n} CUDA device(s), {p[\"name\"].decode()}, cupy {cupy.__version__}')" 2>&1 | tail -1)
say "GPU: $gpu_line"
CORE=$(missing numpy scipy pandas mrcfile starfile healpy numba array_api_compat subtomo_nb cupy)
DASK=$(missing dask distributed)     # dask-cuda too for more than GPU 0 (GPU_IDS): the job says so

# ---- 1. pytest -m gpu ---------------------------------------------------------------------------
t=$(date +%s)
if [ -n "$CORE" ] || [ -n "$(missing pytest)" ]; then
    say "pytest -m gpu: skipped, missing: $CORE $(missing pytest)"
else
    out=$(timeout $(( $(left) < 150 ? $(left) : 150 )) "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/gpu 2>&1 | tail -1)
    say "pytest -m gpu: $out ($(elapsed "$t") s)"
fi

# ---- 2. E-step coarse products vs cuBLAS ----------------------------------------------------------
t=$(date +%s)
if [ -n "$CORE" ]; then
    say "estep benchmark: skipped, missing: $CORE"
else
    if timeout $(( $(left) < 90 ? $(left) : 90 )) "$PY" benchmarks/estep_gpu.py --backend cupy \
            >/tmp/gpu_check_estep.log 2>&1; then
        tail -3 /tmp/gpu_check_estep.log | sed 's/^/gpu_check: /'
    else
        say "estep benchmark: failed: $(tail -1 /tmp/gpu_check_estep.log) (log: /tmp/gpu_check_estep.log)"
    fi
    say "estep benchmark: $(elapsed "$t") s"
fi

# ---- 3. tiny tutorial: VDAM (100 mini-batches) and auto-refine with --gpu ---------------------------
if [ -n "$CORE" ]; then
    say "tutorial: skipped, missing: $CORE"
elif [ -n "$DASK" ]; then
    say "tutorial: skipped, missing: $DASK (the jobs need dask and distributed)"
else
    t=$(date +%s)
    T=$(mktemp -d /tmp/gpu_check_tutorial.XXXX)
    timeout "$(left)" "$PY" - "$T" "$GPU_IDS" <<'EOF' 2>&1 | grep -E '^(figure|error)' | sed 's/^figure: /gpu_check: /'
import sys, time, traceback
from subtomo_nb.jobs.tutorial import run_tutorial
try:
    t0 = time.perf_counter()
    out = run_tutorial(sys.argv[1], tiny=True, n_workers=8, initial_model=True, gpu=sys.argv[2])
    s = out["seconds"]
    print(f"figure: tutorial VDAM initial model, 100 mini-batches, --gpu: {s['initial model']:.1f} s (aim < 180 s)")
    print(f"figure: tutorial auto-refine, --gpu: {s['auto-refine']:.1f} s, {out['refined_resolution_A']:.1f} Å, "
          f"{out['iterations']} iterations (aim < 60 s)")
    print(f"figure: tutorial end to end (simulate, extract, reconstruct on the CPU): {time.perf_counter() - t0:.1f} s")
except Exception as exc:
    print(f"error: tutorial: {type(exc).__name__}: {exc}".splitlines()[0])
    traceback.print_exc(file=open("/tmp/gpu_check_tutorial.err", "w"))
EOF
    grep -h "++++ backend\|memory plan per worker" "$T"/InitialModel/*/run.out "$T"/Refine3D/*/run.out 2>/dev/null \
        | sed 's/^ *+* */gpu_check: run.out: /' | sort -u
    say "tutorial: $(elapsed "$t") s"
fi
say "total: $(elapsed "$START") s of a ${BUDGET} s budget"
