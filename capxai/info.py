"""``python -m capxai.info``: how the loaded capxai._C was built and which kernels each op has.

``--require-cuda`` exits with status 1 unless the build carries CUDA kernels for every op (used by
``make cuda-check``). It needs no GPU: it inspects the dispatcher's registrations, it does not run kernels.
"""
import argparse
import sys

import torch

import capxai
from capxai._extension import extension

BACKENDS = ("CPU", "CUDA", "Meta", "CompositeImplicitAutograd")


def kernel_table():
    """``{op_name: {backend: registered?}}`` for every op of ``torch.ops.capxai``."""
    return {
        name: {key: torch._C._dispatch_has_kernel_for_dispatch_key(f"capxai::{name}", key) for key in BACKENDS}
        for name in capxai.ops.op_names()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m capxai.info", description=__doc__.splitlines()[0])
    parser.add_argument("--require-cuda", action="store_true", help="fail unless CUDA kernels are built in")
    args = parser.parse_args(argv)

    print(f"capxai {capxai.__version__}: extension {extension.__file__}")
    print(f"  built against torch {extension.torch_version}; running torch {torch.__version__}")
    cuda = f"yes (CUDA {extension.cuda_version})" if extension.cuda_built else "no (CPU kernels only)"
    print(f"  CUDA kernels: {cuda}; GPU visible now: {torch.cuda.is_available()}")
    table = kernel_table()
    for name, backends in table.items():
        if backends["CompositeImplicitAutograd"]:
            print(f"  capxai::{name}: composite of the other ops (runs wherever they run)")
            continue
        registered = ", ".join(key if key != "CUDA" or extension.cuda_built else "CUDA (stub: says how to rebuild)"
                               for key, present in backends.items() if present)
        print(f"  capxai::{name}: kernels for {registered}")
    every_op_on_cuda = all(b["CUDA"] or b["CompositeImplicitAutograd"] for b in table.values())
    if args.require_cuda and not (extension.cuda_built and every_op_on_cuda):
        print("error: this build has no CUDA kernels; build with FORCE_CUDA=1", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
