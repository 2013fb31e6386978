"""Loads ``capxai._C``, the compiled relevance kernels; loading it registers the ``torch.ops.capxai.*`` ops.

``CAPXAI_EXTENSION=/path/to/_C*.so`` loads a specific build instead of the one inside the package (used by
``make cuda-check`` to import the CUDA build kept in its own build folder).
"""
import importlib.util
import os
import sys

import torch

EXTENSION_PATH_VARIABLE = "CAPXAI_EXTENSION"
BUILD_HINT = "build it with `make build` (or `pip install --no-build-isolation -e .`) in the capxai checkout"
REBUILD_HINT = ("or rebuild capxai against the torch installed: `make build` in a checkout, or `pip install "
                "--no-build-isolation --force-reinstall --no-deps` of its sdist or folder")


def _load_from_file(path):
    if not os.path.isfile(path):
        raise ImportError(f"{EXTENSION_PATH_VARIABLE}={path!r} names no file; unset it or point it at a built _C*.so")
    spec = importlib.util.spec_from_file_location("capxai._C", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["capxai._C"] = module
    spec.loader.exec_module(module)
    return module


def _load():
    path = os.environ.get(EXTENSION_PATH_VARIABLE)
    if path:
        return _load_from_file(path)
    try:
        from capxai import _C
    except ImportError as error:
        raise ImportError(f"capxai's compiled extension capxai._C is missing or fails to load ({error}); "
                          f"{BUILD_HINT}.") from error
    return _C


def _check_torch_matches(module):
    running = torch.__version__.split("+")[0]
    if module.torch_version != running:
        raise ImportError(f"capxai._C was built against torch {module.torch_version} but torch {running} is "
                          f"imported: install torch=={module.torch_version}, {REBUILD_HINT}.")


extension = _load()
_check_torch_matches(extension)


def cuda_built() -> bool:
    """True when the loaded capxai._C carries CUDA kernels (built with FORCE_CUDA=1 or on a GPU machine)."""
    return bool(extension.cuda_built)


def op_names() -> list:
    """Names of every op in the ``torch.ops.capxai`` namespace, e.g. ``["lrp_linear", ...]``."""
    return list(extension.op_names)
