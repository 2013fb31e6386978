"""How every ``capxai`` command runs: one error style, and signals that stop a command cleanly (the argument types
that check values as they are parsed are :mod:`capxai.options`'s).

Error style (exit status 2, no traceback unless ``--debug``):
``capxai <command>: <what is wrong, naming the option or file>; <what to do>``.
"""
import argparse
import sys
from typing import Callable, NoReturn, Optional

from capxai._io import no_space_cause
from capxai._optional import MissingExtra
from capxai.interrupts import Interrupted, StopSignals  # noqa: F401 (Interrupted: part of this module's API)
from capxai.nn.function_rules import NoRelevanceRule


class CommandError(ValueError):
    """A bad invocation found by a command's own checks (the message names the option or file)."""


class Parser(argparse.ArgumentParser):
    """argparse in capxai's error style: ``capxai train: argument --epochs: must be >= 1, got '0'; see capxai train
    --help``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


# -- running a command ---------------------------------------------------------------------------------------------
def message_of(error: BaseException) -> str:
    """The one-line message of an expected error (OSError: its text and the file it names)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return text.splitlines()[0] if text.count("\n") > 3 else text.replace("\n", " ")


# bad values, missing / unreadable / unwritable files and folders, a model with a part LRP has no rule for, an optional
# package the command needs (its message names the extra: pip install 'capxai[...]')
EXPECTED = (ValueError, OSError, NoRelevanceRule, MissingExtra)


def run_command(name: str, command: Callable[[], int], debug: bool, resumable: bool,
                batch_size: Optional[int] = None) -> int:
    """Runs ``command`` with capxai's error style: expected errors (bad values, files, folders) print one line and
    return 2 (a write that met a full disk names the file: :class:`capxai._io.WriteFailed`); running out of memory
    (CPU or GPU) prints one line naming ``--batch-size`` (the command's ``batch_size``) and half of it, and
    returns 2; Ctrl-C / SIGTERM print one line and return 130 / 143 (what a
    shell reports for them); anything else is a bug: one line asking for ``--debug``, return 1. ``debug``
    re-raises instead, with the traceback."""
    with StopSignals() as stops:
        return _run(name, command, debug, resumable, stops, batch_size)


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that did not fit: CUDA's OutOfMemoryError, the CPU allocator's
    RuntimeError ("can't allocate memory"), another backend's "out of memory", or Python's MemoryError."""
    import torch  # loaded by every command that allocates tensors; this module is imported before it

    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error)
                                                or "out of memory" in str(error).lower())


def _out_of_memory_message(name: str, error: BaseException, batch_size: Optional[int], resumable: bool) -> str:
    where = f" at --batch-size {batch_size}" if batch_size else ""
    advice = (f"try --batch-size {max(1, batch_size // 2)}" if batch_size and batch_size > 1
              else "free memory or use a machine with more")
    kept = "; the last checkpoint is kept and the same command resumes" if resumable else ""
    text = message_of(error)
    return f"capxai {name}: out of memory{where} ({text[:160]}); {advice}{kept}"


def _run(name: str, command: Callable[[], int], debug: bool, resumable: bool, stops: StopSignals,
         batch_size: Optional[int] = None) -> int:
    try:
        return command()
    except KeyboardInterrupt as error:
        stops.seen()
        if debug:
            raise
        then = "rerun the same command to resume" if resumable else "nothing half-written was left; rerun the command"
        print(f"capxai {name}: interrupted; {then}", file=sys.stderr)
        return 143 if isinstance(error, Interrupted) else 130
    except EXPECTED as error:
        if debug:
            raise
        print(f"capxai {name}: {message_of(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # out of memory, or a bug: say so briefly; --debug shows where
        if debug:
            raise
        if out_of_memory(error):
            print(_out_of_memory_message(name, error, batch_size, resumable), file=sys.stderr)
            return 2
        full = no_space_cause(error)
        if full is not None:  # a library's own write (e.g. a tokenizer's temporary file) met a full disk
            print(f"capxai {name}: {message_of(full)} (a full disk, a file-size limit or a quota); free space and "
                  "rerun the command", file=sys.stderr)
            return 2
        print(f"capxai {name}: internal error ({type(error).__name__}: {message_of(error)}); rerun with --debug "
              "for the traceback and report it", file=sys.stderr)
        return 1
