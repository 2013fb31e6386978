#!/usr/bin/env bash
# Makes a CUDA-toolkit-shaped folder for CMake's find_package(Torch) on a CUDA build of torch:
#   include -> the nvidia-* wheels' headers (the system toolkit lacks some, e.g. cusparse.h)
#   lib64   -> the wheels' shared libraries, plus the unversioned .so names CMake looks for
#   bin     -> the system toolkit's bin (nvcc)
# Usage: tools/cuda_toolkit_shim.sh PYTHON OUT_DIR   (prints OUT_DIR on success)
set -euo pipefail
python=$1
out=$2
wheel_root=$("$python" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
toolkit_bin=${CUDA_HOME:-/usr/local/cuda}/bin
[ -d "$wheel_root/include" ] || { echo "cuda_toolkit_shim: no CUDA headers under $wheel_root (is torch a CUDA build?)" >&2; exit 1; }
[ -x "$toolkit_bin/nvcc" ] || { echo "cuda_toolkit_shim: no nvcc in $toolkit_bin; set CUDA_HOME" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/lib64"
ln -s "$wheel_root/include" "$out/include"
ln -s "$(realpath "$toolkit_bin")" "$out/bin"
for lib in "$wheel_root"/lib/*.so*; do
  name=$(basename "$lib")
  ln -s "$lib" "$out/lib64/$name"
  unversioned=${name%%.so*}.so
  [ -e "$out/lib64/$unversioned" ] || ln -s "$lib" "$out/lib64/$unversioned"
done
echo "$out"
