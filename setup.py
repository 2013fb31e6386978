"""Builds capxai._C with torch.utils.cpp_extension (ninja).

C++ kernels always (OpenMP, -O3). CUDA kernels when a GPU is visible and nvcc is found, or when FORCE_CUDA=1
(the torchvision/detectron2 convention, for building on a machine without a GPU); CAPXAI_NO_CUDA=1 turns CUDA off;
CAPXAI_DEBUG_INFO=1 keeps the C++ debug info (-g), which is left out by default.
Development: `pip install --no-build-isolation -e .` (make build), against the venv's torch, in about a minute.
Isolated builds (`pip install .`, of the sdist, `python -m build`) put torch in the build environment (about 5 GB,
35 s to 2 min here): it must be the torch the package will run with, which a build constraint pins (pyproject.toml's
[build-system] says how; make wheel-check does it).
"""
import glob
import importlib.util
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CONVENTIONAL_CUDA_HOMES = ("/usr/local/cuda", "/opt/cuda")


def _has_nvcc(cuda_home):
    return bool(cuda_home) and os.path.isfile(os.path.join(cuda_home, "bin", "nvcc"))


def _locate_cuda_home():
    """CUDA_HOME from the environment, else the conventional location.

    torch guesses CUDA_HOME from `which nvcc`, which is wrong when nvcc on PATH is a wrapper script (as on the capxai
    build machines), so a real toolkit folder is found first and handed to torch through the environment.
    """
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if _has_nvcc(os.environ.get(variable)):
            return os.environ[variable]
    for candidate in CONVENTIONAL_CUDA_HOMES:
        if _has_nvcc(candidate):
            return os.path.realpath(candidate)
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


CUDA_HOME = _locate_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # must be set before torch.utils.cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda():
    if _flag("CAPXAI_NO_CUDA"):
        return False
    if _flag("FORCE_CUDA"):
        if not _has_nvcc(CUDA_HOME):
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit with bin/nvcc was found; set CUDA_HOME to it.")
        return True
    return torch.cuda.is_available() and _has_nvcc(CUDA_HOME)


def _wheel_cuda_includes():
    """Headers the system toolkit may lack (e.g. cusparse.h) that the nvidia-* wheels beside torch carry."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for base in spec.submodule_search_locations:
        found += sorted(glob.glob(os.path.join(base, "cu*", "include")))
    return found


def _sources(use_cuda):
    csrc = os.path.join("csrc")
    sources = glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "*", "*.cpp"))
    sources += glob.glob(os.path.join(csrc, "*", "cpu", "*.cpp"))
    if use_cuda:
        sources += glob.glob(os.path.join(csrc, "*", "cuda", "*.cu"))
    return sorted(sources)


def _extension():
    use_cuda = _want_cuda()
    # No debug info unless asked (CAPXAI_DEBUG_INFO=1): Python's own flags add -g, whose DWARF for ATen's templates
    # took 40 % of a file's compile time (13.2 s -> 8.0 s for lrp_lstm_cpu.cpp on the 2-core VM) and 97 % of its
    # object file, on every `make test` of a clean clone.
    cxx_flags = ["-O3", "-fopenmp"] + ([] if _flag("CAPXAI_DEBUG_INFO") else ["-g0"])
    link_flags = ["-fopenmp"]
    if not use_cuda:
        print("capxai: building the C++ (CPU) kernels only")
        return CppExtension("capxai._C", _sources(False), extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=link_flags)
    print(f"capxai: building C++ and CUDA kernels (CUDA_HOME={CUDA_HOME})")
    defines = ["-DCAPXAI_WITH_CUDA"]
    return CUDAExtension(
        "capxai._C",
        _sources(True),
        include_dirs=_wheel_cuda_includes(),
        extra_compile_args={"cxx": cxx_flags + defines, "nvcc": ["-O3", "-lineinfo"] + defines},
        extra_link_args=link_flags,
    )


os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))

setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
