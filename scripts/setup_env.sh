#!/usr/bin/env bash
# Create the project environment at .venv/ from nothing (CPU route) and install every dependency.
#
# - torch/torchvision come first (mmcv's build needs them importable).
# - mmcv 2.1.0 has no CPU wheel: it is built once from the sdist with compiled ops, with its C++
#   standard raised to C++20 (torch 2.14 headers need it), and the wheel is cached OUTSIDE the
#   checkout under $HG_LMM_CACHE (default ~/.cache/hg_lmm), keyed by the torch version, because
#   pip's own wheel cache ignores which torch the extension was compiled against.
# - A stamp records the hash of requirements.txt and this script: a second run is a fast no-op.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
CACHE="${HG_LMM_CACHE:-$HOME/.cache/hg_lmm}"
WHEEL_DIR="$CACHE/wheels/torch-$TORCH_VERSION"
STAMP="$VENV/.hg_lmm_setup_stamp"

want_stamp="$(cat requirements.txt scripts/setup_env.sh | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  echo "[setup] .venv is up to date (delete $STAMP to force a reinstall)"
  exit 0
fi

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# setuptools must still ship pkg_resources (mmcv's setup.py) and satisfy torch (>=77.0.3).
"${PIP[@]}" install -q --upgrade pip wheel "setuptools>=77.0.3,<81"
"${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "numpy>=1.26,<2"

# Everything but the OpenMMLab vision stack first, so the rest of the environment is usable while
# mmcv compiles (and so mmcv's build finds numpy/torch).
"${PIP[@]}" install -q -r <(grep -vE '^(mmcv|mmdet|mmsegmentation)\b' requirements.txt)

if "$PY" -c "import mmcv, mmcv._ext, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
  echo "[setup] mmcv $MMCV_VERSION with compiled ops already installed"
else
  wheel=$(ls "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)
  if [[ -z "$wheel" ]]; then
    echo "[setup] building mmcv $MMCV_VERSION with ops from source (about 20 min on 2 cores, once)"
    build="$(mktemp -d)"
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
      "mmcv==$MMCV_VERSION" -d "$build"
    tar -xzf "$build"/mmcv-$MMCV_VERSION.tar.gz -C "$build"
    src="$build/mmcv-$MMCV_VERSION"
    # torch >= 2.10 headers need C++20; mmcv 2.1.0 hard-codes c++14/17.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
    grep -q -- '-std=c++20' "$src/setup.py" || { echo "[setup] could not patch mmcv's C++ flags" >&2; exit 1; }
    (cd "$src" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$build/dist" .)
    mkdir -p "$WHEEL_DIR"
    cp "$build"/dist/mmcv-$MMCV_VERSION-*.whl "$WHEEL_DIR/"
    wheel=$(ls "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl | head -n1)
    rm -rf "$build"
    echo "[setup] cached $wheel"
  else
    echo "[setup] using cached $wheel"
  fi
  "${PIP[@]}" install -q --no-deps "$wheel"
fi

"${PIP[@]}" install -q -r requirements.txt
"${PIP[@]}" install -q --no-deps -e .

"$PY" - <<'PY'
import mmcv._ext  # noqa: F401  compiled ops present
import transformers
assert transformers.__version__ == "4.39.1", transformers.__version__
PY
if ! command -v java >/dev/null 2>&1; then
  echo "[setup] WARNING: java not found: pycocoevalcap's METEOR (GCG evaluation) needs a JRE" \
       "(Debian: apt-get install default-jre-headless)" >&2
fi
echo "$want_stamp" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - start )) s"
