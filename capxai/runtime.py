"""Run settings shared by every command (train, finetune, evaluate, explain, the demo): where the work runs
(``--device``), in what precision training runs (``--precision``), how many processes decode images
(``--workers``), and the process group of a ``torchrun`` launch (NCCL on CUDA, gloo on the CPU), defined once in
:class:`RunOptions`.

One small object, :class:`RunSettings`, is made once from the options (:func:`run_settings`) and handed down; the
library functions take it as ``run=``. Training and fine-tuning build their model, so their default is
:func:`run_settings` with its defaults (the GPU when one is visible, float32, images decoded in the calling
process); the functions that are handed a model (captioning, evaluation, explaining a split) keep it where it is
and default to ``RunSettings()`` (no workers, one process). Imported by any layer of capxai; imports none but
:mod:`capxai.options` (which imports nothing of capxai).

Why explanations stay float32: every LRP rule divides by a forward value (``R * x w / stab(z)``); in bfloat16 a
pre-activation keeps 8 bits of mantissa, so a ``z`` that is a small difference of large terms loses most of its
digits and the ratio can change sign. Training tolerates that noise; relevance does not (docs/LRP_RULES.md (Part 2),
"Precision").
"""
import contextlib
import dataclasses
import os
import signal
import sys
import threading
from typing import Callable, Optional

import torch

from capxai.options import COUNT, option

DEVICES_HELP = "auto (the GPU when one is visible, else the CPU), cpu, cuda or cuda:N"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
BACKENDS = ("auto", "nccl", "gloo")


def torchrun_rank() -> tuple:
    """``(rank, local rank, world size)`` of this process under ``torchrun`` (its environment), else ``(0, 0, 1)``."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")))


def default_workers() -> int:
    """Image-decoding processes a command starts by default: the cores this process may use (shared with the other
    processes of a torchrun launch on this machine), less one for the process itself, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, cores // max(1, local_world) - 1))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Where and how a command runs. Make it with :func:`run_settings` (which checks everything).

    Attributes:
        device: where the model, images, captions and every tensor of the work live.
        precision: "fp32", "bf16" or "fp16": autocast of training and fine-tuning (fp16 with a gradient scaler).
        workers: DataLoader processes that decode and resize images (0: in this process).
        backend: the process group's backend under torchrun ("nccl" or "gloo").
        rank, world_size: this process and how many there are (torchrun; 0 and 1 otherwise).
    """

    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    workers: int = 0
    backend: str = "gloo"
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> dict:
        """Plain data for histories and result files (what ran where; never a reason to refuse a resume)."""
        return {"device": str(self.device), "precision": self.precision, "workers": self.workers,
                "processes": self.world_size}

    # -- training precision ------------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the training precision on the run's device (nothing for fp32)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> "torch.amp.GradScaler":
        """A gradient scaler, active for fp16 only (bf16 has float32's range and needs none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    # -- data --------------------------------------------------------------------------------------------------
    def loader(self, dataset, batch_size: int, collate_fn: Callable, *, sampler=None, generator=None,
               persistent: bool = False) -> torch.utils.data.DataLoader:
        """A DataLoader in the run's image-decoding processes: pinned memory on CUDA; ``persistent`` keeps the
        workers between epochs. ``generator`` (always given by capxai) keeps the loader from drawing on torch's
        global generator, which dropout uses, so the result does not depend on ``workers``."""
        return _Loader(dataset, batch_size=batch_size, collate_fn=collate_fn, sampler=sampler,
                       num_workers=self.workers, pin_memory=self.on_cuda,
                       persistent_workers=persistent and self.workers > 0,
                       generator=generator, worker_init_fn=_quiet_worker)

    def to_device(self, batch):
        """A batch (tensors, or dicts / lists of them) on the run's device; copies from pinned memory overlap."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=self.on_cuda)
        if isinstance(batch, dict):
            return {name: self.to_device(value) for name, value in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(value) for value in batch)
        return batch

    # -- several processes -------------------------------------------------------------------------------------
    def join(self) -> None:
        """Starts this process's part of the torchrun process group (once; nothing when not distributed)."""
        if not self.distributed or torch.distributed.is_initialized():
            return
        if self.on_cuda:
            torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(self.backend, device_id=self.device)
        else:
            torch.distributed.init_process_group(self.backend)

    def barrier(self) -> None:
        """Waits for every process of the group (joining it first); nothing when not distributed."""
        if self.distributed:
            self.join()
            torch.distributed.barrier()

    def gather(self, value) -> list:
        """Every process's ``value`` (any picklable object), in rank order, on every process."""
        if not self.distributed:
            return [value]
        self.join()
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_deferred():
    """Holds Ctrl-C and SIGTERM back while the block runs and delivers them after it.

    Starting DataLoader workers forks, and a KeyboardInterrupt raised inside one of Python's at-fork hooks (logging
    registers one) is printed as "Exception ignored" and lost: the command went on to its last epoch. Here a signal
    that arrives during the block is only recorded, then raised again once the handlers are back. Nothing is held
    outside the main thread, where Python cannot change handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = {number: signal.signal(number, lambda received, frame: arrived.append(received))
                for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        if arrived:
            signal.raise_signal(arrived[0])


class _Loader(torch.utils.data.DataLoader):
    """A DataLoader whose workers start with the stop signals held back (:func:`stop_signals_deferred`)."""

    def __iter__(self):
        with stop_signals_deferred():
            return super().__iter__()


def _quiet_worker(worker: int) -> None:
    """A decoding worker leaves stopping to the command, which prints the one line a user should see.

    Ctrl-C reaches the whole process group: the worker ignores it (the command stops it). SIGTERM ends it the way
    torch's worker loop ends quietly (a KeyboardInterrupt). When the command exits while it is fetching a batch's
    shared memory from this worker, the worker's resource-sharer thread loses its connection and would print a
    traceback after the command's message; a lost connection to the command is not this worker's error to report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)
    sys.excepthook = _silent_on_lost_command(sys.excepthook)


def _stop_worker(number, frame) -> None:
    raise KeyboardInterrupt


def _silent_on_lost_command(report: Callable) -> Callable:
    def excepthook(kind, value, traceback) -> None:
        if not issubclass(kind, (EOFError, ConnectionError)):
            report(kind, value, traceback)
    return excepthook


def _device_of(text: str, local_rank: int, distributed: bool) -> torch.device:
    visible = torch.cuda.is_available()
    count = torch.cuda.device_count() if visible else 0
    if text == "cpu" or (text == "auto" and not visible):
        return torch.device("cpu")
    try:
        device = torch.device("cuda" if text == "auto" else text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type != "cuda":
        raise ValueError(f"--device must be {DEVICES_HELP}, got {text!r}")
    if not visible:
        raise ValueError(f"--device {text}: no GPU is visible here (torch.cuda.is_available() is False); use "
                         "--device cpu or auto")
    if device.index is None:  # "cuda", "auto": under torchrun, the GPU of the process's LOCAL_RANK
        device = torch.device("cuda", local_rank)
    elif distributed:
        raise ValueError(f"--device {text}: under torchrun each process takes the GPU of its LOCAL_RANK; give "
                         "--device cuda (or auto), and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if device.index >= count:
        if distributed and text in ("auto", "cuda"):
            raise ValueError(f"--device {text}: process LOCAL_RANK {local_rank} has no GPU of its own (this machine "
                             f"shows {count}); start at most {count} processes per machine (--nproc_per_node)")
        raise ValueError(f"--device {device}: this machine shows {count} GPU{'s' if count != 1 else ''} "
                         f"(cuda:0{f' .. cuda:{count - 1}' if count > 1 else ''})")
    return device


def run_settings(device: str = "auto", precision: str = "fp32", workers: int = 0,
                 backend: str = "auto") -> RunSettings:
    """Checked run settings; a GPU chosen becomes the current CUDA device. Errors (``ValueError``) name the option:
    a GPU asked for where none is visible or that does not exist (also: more torchrun processes than GPUs), fp16 on
    the CPU (float16 autocast with a gradient scaler is a GPU recipe; bf16 runs on
    both), bf16 on a GPU without bfloat16, negative workers, NCCL with the CPU (NCCL reduces CUDA tensors only)."""
    rank, local_rank, world = torchrun_rank()
    chosen = _device_of(str(device), local_rank, world > 1)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and chosen.type != "cuda":
        raise ValueError("--precision fp16 needs a GPU (--device cuda): float16 training with a gradient scaler is "
                         "a GPU recipe; on the CPU use --precision bf16 or fp32")
    if precision == "bf16" and chosen.type == "cuda" and torch.cuda.get_device_properties(chosen).major < 8:
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(chosen)} has no bfloat16 arithmetic (it "
                         "came with compute capability 8.0); use fp16 or fp32")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"--workers must be an integer >= 0 (0 decodes images in this process), got {workers!r}")
    if backend not in BACKENDS:
        raise ValueError(f"--dist-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "nccl" and chosen.type != "cuda":
        raise ValueError(f"--dist-backend nccl needs --device cuda (NCCL reduces CUDA tensors only; the device is "
                         f"{chosen}); use gloo on the CPU")
    resolved = backend if backend != "auto" else ("nccl" if chosen.type == "cuda" else "gloo")
    if chosen.type == "cuda":
        # the current device: where the DataLoader's pinning thread and torch's default CUDA context go
        torch.cuda.set_device(chosen)
    return RunSettings(chosen, precision, workers, resolved, rank, world)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The run options of every computing command, as given (``--device``, ``--precision``, ``--workers``,
    ``--dist-backend``); :meth:`settings` checks them into :class:`RunSettings`."""

    device: str = option("auto", help=f"where to run: {DEVICES_HELP}; under torchrun each process takes the GPU of "
                         "its LOCAL_RANK (default auto)")
    precision: str = option("fp32", choices=tuple(PRECISIONS), help="training arithmetic: fp32, or bf16 / fp16 "
                            "autocast (fp16 with a gradient scaler, GPU only); explanations stay float32 (default "
                            "fp32)")
    workers: Optional[int] = option(None, type=COUNT, help="processes decoding images (0: in this process; default "
                                    f"{default_workers()} here: the cores less one, at most 8); results do not depend "
                                    "on it")
    dist_backend: str = option("auto", choices=BACKENDS, help="torchrun's process group: auto (nccl on CUDA, gloo "
                               "on the CPU), nccl or gloo")

    def settings(self) -> RunSettings:
        """The checked :class:`RunSettings` (``workers`` None: :func:`default_workers`)."""
        workers = self.workers if self.workers is not None else default_workers()
        return run_settings(self.device, self.precision, workers, self.dist_backend)


def default_run(run: Optional[RunSettings]) -> RunSettings:
    """``run``, or the library default: :func:`run_settings` with its defaults."""
    return run if run is not None else run_settings()
