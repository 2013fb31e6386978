"""``python -m capxai.demo`` (``make demo``): the paper end to end on the built-in scenes, and its HTML report.

Stages, each a ``capxai`` command a user could type (the demo prints them), each skipped when its result exists and
is complete, so an interrupted demo resumes where it stopped:

1. ``capxai data scenes``: the built-in scenes (train / val / test);
2. per captioner (the paper's adaptive attention and multi-head captioners, a transformer decoder and a Hugging Face
   ViT + GPT-2, in four worker processes): ``capxai train`` (cross-entropy), ``capxai evaluate`` of the test split
   with every explanation method (captions, CHAIR, probes, grounding, pointing game, ablation, hallucination
   detection), ``capxai explain`` of a few test images with every method (the report's heatmaps) and with LRP of
   each word against the model's runner-up word there (the report's contrastive panel); for the paper's
   two, ``capxai finetune`` with LRP, with explanation-gated labels and with the baseline, and ``capxai evaluate``
   of the fine-tuned models (both methods read the two terms the output layer sums, which the transformer and GPT-2
   do not have);
3. ``capxai finetune-table`` (before / baseline / LRP / gated, with intervals) and ``capxai report`` ->
   ``OUT/report.html``.

Everything lands in ``OUT`` (``runs/demo``; ``runs/demo-quick`` with ``--quick``): one folder per command, the
workers' logs in ``OUT/logs``, the stage times in ``OUT/demo.json``. A folder that holds a demo of other settings is
refused (``--overwrite`` starts it afresh).

``--device`` (default auto: the GPU when one is visible): every command runs there. On the CPU the four captioners
train at once, sharing the cores; on one GPU one after the other, with several GPUs spread over them. The recipe is
the same on every device, so the numbers stay comparable (a GPU sums in another order: captions and scores may differ in
the last digits, and a caption that differs in one word changes its image's scores). Where the work runs is not a
setting of the demo folder: a demo started on the CPU may be resumed on a GPU.

``run_demo(..., in_process=True)`` runs the same commands as calls of ``capxai.cli.main`` in the calling process, one
after the other (the tests' tiny demo: a command's own process costs seconds to start Python and torch, and METEOR's
Java once per evaluation).
"""
import argparse
import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from capxai._io import atomic_write_json
from capxai.data.captions import image_id_of, load_karpathy
from capxai.evaluate.run import result_group
from capxai.evaluate.settings import EvaluateOptions
from capxai.explain import METHODS as METHOD_REGISTRY, RUNNER_UP
from capxai.models import CAPTIONERS as CAPTIONER_REGISTRY
from capxai.options import add_options, option
from capxai.runtime import DEVICES_HELP, RunOptions, run_settings
from capxai.train.methods import FINETUNE_METHODS as FINETUNE_REGISTRY

CAPTIONERS = ("adaptive", "multihead", "transformer", "hf-vit-gpt2")  # kinds of capxai.models.CAPTIONERS
FINETUNED = ("adaptive", "multihead")  # LRP-inference fine-tuning weights the two terms their output layer sums
# the paper's method, capxai's explanation-gated labels (issue 23) and the baseline they are compared with (names of
# capxai.train.methods.FINETUNE_METHODS, whose titles the report shows)
FINETUNE_METHODS = ("baseline", "lrp", "gated")
METHODS = tuple(METHOD_REGISTRY.names())  # every registered method (what `--method all` explains)
# What the evaluations measure: every method but the perturbation baselines, whose cost is tens of forwards an image
# (in the quick demo's evaluation of the adaptive captioner, 40 images: Integrated Gradients 240.8 s, occlusion
# 43.1 s, Gradient x Input 13.2 s); the demo explains them (figures, report), `capxai evaluate --explanations all`
# measures them
PERTURBATION_METHODS = ("integrated-gradients", "occlusion")
EVALUATED_METHODS = tuple(method for method in METHODS if method not in PERTURBATION_METHODS)
# The paper's two captioners (sized in issue 11 to reach test CIDEr >= 1.6 with all five captions of an image in
# each step, 6 epochs). Two of an image's captions per step (all five over the epochs) and 4 epochs keep three
# workers within 45 minutes on a 2-core VM whose training steps are twice as slow as the one that recipe was sized on
# (docs/experiments/demo/README.md, "Sizing").
CAPTIONER_RECIPE = ("--hidden", "128", "--attention-dim", "64", "--dropout", "0.3", "--lr", "1e-3",
                    "--batch-size", "32")
# The transformer: a training step costs about 0.8 of the LSTM captioners' on one thread.
TRANSFORMER_RECIPE = ("--hidden", "96", "--heads", "4", "--layers", "2", "--dropout", "0.1", "--lr", "1e-3",
                      "--batch-size", "32")
# The Hugging Face ViT + GPT-2 (both trained from their configs: no weights can be downloaded): 64 wide, two layers
# each, patches of 8 px. A ViT from scratch is slow to start reading the image: on the quick scenes at lr 1e-3 with
# dropout 0.1 it captioned every test image alike after 3 epochs; at 3e-3 without dropout it reached validation
# CIDEr 0.50 at epoch 4 with 50 distinct captions on 300 test images (docs/experiments/hf-captioners/README.md).
HF_RECIPE = ("--hidden", "64", "--heads", "2", "--layers", "2", "--dropout", "0.0", "--lr", "3e-3",
             "--batch-size", "32")
assert all(kind in CAPTIONER_REGISTRY for kind in CAPTIONERS)
assert all(method in FINETUNE_REGISTRY for method in FINETUNE_METHODS)
SPLIT, BEAM = EvaluateOptions().split, EvaluateOptions().beam_size  # capxai evaluate's defaults
GROUP = result_group(SPLIT, BEAM)  # the evaluations' result files: eval-*/explanations_GROUP.json
CONFIG_NAME, TIMES_NAME = "demo_config.json", "demo.json"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; ``QUICK`` is the same on a small set (about 10 minutes on 2 cores)."""

    scenes: Sequence[int] = (8000, 1000, 2000)  # train, val, test images
    epochs: int = 4  # cross-entropy epochs of each captioner
    captions_per_image: int = 2  # captions of an image in each training and fine-tuning step (0: all five)
    finetune_epochs: int = 1
    explain_limit: int = 150  # test images whose explanations are measured (captions and CHAIR use all)
    finetuned_explain_limit: int = 150  # the same for the fine-tuned models (LRP grounding only)
    ablation: bool = True
    report_images: int = 6  # test images explained with every method for the report
    seed: int = 0
    train_arguments: Sequence[str] = CAPTIONER_RECIPE  # the paper's two captioners
    transformer_arguments: Sequence[str] = TRANSFORMER_RECIPE
    hf_arguments: Sequence[str] = HF_RECIPE
    hf_epochs: int = 0  # the HF captioner's epochs (0: ``epochs``); its ViT, trained from scratch, starts slower
    contrast: str = RUNNER_UP  # the report's contrastive LRP panel: each word against this ("" for none)
    captioners: Sequence[str] = CAPTIONERS  # the captioners the demo trains (a subset: a test's shorter demo)


# all five captions per step: on 1000 scenes two would leave the captioners too little to learn from; the HF
# captioner 5 epochs (at 3 its ViT had not started reading the images, HF_RECIPE's comment)
QUICK = DemoConfig(scenes=(1000, 100, 300), epochs=3, captions_per_image=0, explain_limit=40,
                   finetuned_explain_limit=40, report_images=4, hf_epochs=5)


@dataclasses.dataclass
class Stage:
    """One command of the demo: ``arguments`` for ``capxai``, skipped when ``done()`` says its result is there."""

    name: str
    arguments: Callable[[], List[str]]  # built when the stage starts (it may read what earlier stages wrote)
    done: Callable[[], bool]


class Demo:
    """The stages of one demo folder and how to know each is complete."""

    def __init__(self, out: Path, config: DemoConfig, devices: Optional[Dict[str, str]] = None):
        self.out, self.config = out, config
        self.devices = devices or {}  # captioner -> the --device its commands take (default: the CPU)
        self.scenes = out / "scenes"
        self.data = ["--split-file", str(self.scenes / "dataset_scenes.json"), "--image-root", str(self.scenes)]

    def folder(self, kind: str, captioner: str, variant: str = "") -> Path:
        """``captioner-adaptive``, ``eval-adaptive``, ``finetune-adaptive-lrp``, ``eval-adaptive-lrp`` ..."""
        return self.out / "-".join(part for part in (kind, captioner, variant) if part)

    def scenes_stage(self) -> Stage:
        train, val, test = self.config.scenes
        return Stage("scenes", lambda: ["data", "scenes", "--out", str(self.scenes), "--train", str(train), "--val",
                                        str(val), "--test", str(test), "--seed", str(self.config.seed), "--overwrite"],
                     lambda: (self.scenes / "dataset_scenes.json").is_file())

    def run_arguments(self, captioner: str) -> List[str]:
        """The run options of a captioner's commands: its device; on the CPU images are decoded in the command's
        own process (96-pixel scenes decode in microseconds, and the workers already share the cores)."""
        device = self.devices.get(captioner, "cpu")
        return ["--device", device] + (["--workers", "0"] if device == "cpu" else [])

    def epochs(self, captioner: str) -> int:
        """The cross-entropy epochs of a captioner."""
        return self.config.hf_epochs if captioner == "hf-vit-gpt2" and self.config.hf_epochs else self.config.epochs

    def recipe(self, captioner: str) -> Sequence[str]:
        """The training options of a captioner (its size, dropout, learning rate)."""
        return {"transformer": self.config.transformer_arguments,
                "hf-vit-gpt2": self.config.hf_arguments}.get(captioner, self.config.train_arguments)

    def captioner_stages(self, captioner: str) -> List[Stage]:
        trained = self.folder("captioner", captioner)
        checkpoint = str(trained / "best.pt")
        on = self.run_arguments(captioner)
        stages = [
            Stage("train", lambda: ["train", *self.data, "--out", str(trained), "--model", captioner, "--epochs",
                                    str(self.epochs(captioner)), "--seed", str(self.config.seed),
                                    "--captions-per-image", str(self.config.captions_per_image),
                                    *self.recipe(captioner), *on],
                  lambda: _training_done(trained, self.epochs(captioner))),
            self._evaluate_stage("evaluate", checkpoint, self.folder("eval", captioner), ",".join(EVALUATED_METHODS),
                                 self.config.explain_limit, self.config.ablation, on),
            Stage("explain", lambda: self._explain_arguments(captioner),
                  lambda: all((self.folder("explain", captioner) / m / name).is_file()
                              for m in METHODS for name in ("explanation.pt", "explanation.json"))),
        ]
        if self.config.contrast:
            contrasted = self.folder("explain", captioner, "contrast")
            stages.append(Stage("explain contrast", lambda: self._explain_arguments(captioner, contrast=True),
                                lambda: all((contrasted / "lrp" / name).is_file()
                                            for name in ("explanation.pt", "explanation.json"))))
        for method in (FINETUNE_METHODS if captioner in FINETUNED else ()):
            tuned = self.folder("finetune", captioner, method)
            stages.append(Stage(f"finetune {method}", lambda tuned=tuned, method=method: [
                "finetune", "--checkpoint", checkpoint, *self.data, "--out", str(tuned), "--method", method,
                "--epochs", str(self.config.finetune_epochs), "--seed", str(self.config.seed),
                "--captions-per-image", str(self.config.captions_per_image), *on],
                lambda tuned=tuned: _training_done(tuned, self.config.finetune_epochs)))
            stages.append(self._evaluate_stage(f"evaluate {method}", str(tuned / "best.pt"),
                                               self.folder("eval", captioner, method), "lrp",
                                               self.config.finetuned_explain_limit, False, on))
        return stages

    def _evaluate_stage(self, name: str, checkpoint: str, out: Path, methods: str, limit: int, ablation: bool,
                        on: Sequence[str]):
        group = GROUP
        files = [out / f"{kind}_{group}.json" for kind in ("captions", "metrics", "hallucination", "explanations")]
        files.append(out / f"explanations_{group}.md")  # written last
        return Stage(name, lambda: ["evaluate", "--checkpoint", checkpoint, *self.data, "--split", SPLIT,
                                    "--beam-size", str(BEAM), "--explanations", methods, "--explain-limit", str(limit),
                                    *([] if ablation else ["--no-ablation"]), "--out", str(out), "--overwrite", *on],
                     lambda: all(path.is_file() for path in files))

    def _explain_arguments(self, captioner: str, contrast: bool = False) -> List[str]:
        """Explain the report's images with the captions the evaluation gave them (so that CHAIR's word positions
        match the explained words); with ``contrast``, LRP of each word against ``config.contrast`` (the report's
        third panel) for the images the plain explanation chose."""
        chosen_path = self.folder("explain", captioner).with_name(f"report-images-{captioner}.json")
        if contrast:
            chosen = json.loads(chosen_path.read_text())
        else:
            evaluation = self.folder("eval", captioner)
            chosen = choose_report_images(evaluation, self.scenes, self.config.report_images)
            if not chosen:
                raise RuntimeError(f"no test image of {evaluation} has a caption to explain (every caption is empty): "
                                   f"the {captioner} captioner learned too little; train it longer (more epochs or "
                                   "scenes)")
            atomic_write_json(chosen_path, chosen)
        what = ["--method", "lrp", "--contrast", self.config.contrast] if contrast else ["--method", "all"]
        return ["explain", "--checkpoint", str(self.folder("captioner", captioner) / "best.pt"),
                "--images", *[str(self.scenes / entry["file"]) for entry in chosen],
                "--captions", *[entry["caption"] for entry in chosen], *what, "--no-figures",
                "--out", str(self.folder("explain", captioner, "contrast" if contrast else "")), "--overwrite",
                *self.run_arguments(captioner)]

    def table_stage(self) -> Stage:
        rows = []
        for captioner in (c for c in FINETUNED if c in self.config.captioners):
            rows += ["--row", f"{captioner}/xe={self.folder('eval', captioner)}"]
            for method in FINETUNE_METHODS:
                rows += ["--row", f"{captioner}/{method}-xe={self.folder('eval', captioner, method)}"]
        return Stage("finetune table", lambda: ["finetune-table", *rows, "--split", SPLIT, "--beam-size", str(BEAM),
                                                "--out", str(self.out / "finetune"), "--overwrite"],
                     lambda: False)

    def report_stage(self) -> Stage:
        return Stage("report", lambda: ["report", str(self.out), "--overwrite"], lambda: False)


def _training_done(folder: Path, epochs: int) -> bool:
    history = folder / "history.json"
    if not (history.is_file() and (folder / "best.pt").is_file()):
        return False
    try:
        return len(json.loads(history.read_text())["epochs"]) >= epochs
    except (ValueError, KeyError):
        return False


def choose_report_images(evaluation: Path, scenes: Path, count: int) -> List[dict]:
    """Test images for the report: probe images whose caption names the absent partner first (the hallucination
    the paper explains), then a probe image captioned correctly, then ordinary images; in split order."""
    group = GROUP
    captions = {entry["image_id"]: entry["caption"]
                for entry in json.loads((evaluation / f"captions_{group}.json").read_text())}
    chair = json.loads((evaluation / f"hallucination_{group}.json").read_text())["chair"]["imgToEval"]
    entries = {image_id_of(entry, position): entry
               for position, entry in enumerate(load_karpathy(scenes / "dataset_scenes.json"))
               if entry.get("split") == SPLIT}
    hallucinated, probe_correct, ordinary = [], [], []
    for image_id, caption in captions.items():
        entry = entries.get(image_id)
        if entry is None or not caption.strip():  # an empty caption has no word to explain
            continue
        wrong = chair.get(str(image_id), {}).get("mscoco_hallucinated_words", [])
        item = {"image_id": image_id, "file": str(Path(entry.get("filepath", "")) / entry["filename"]),
                "caption": caption, "probe": entry.get("probe"), "hallucinated": [w for w, _ in wrong]}
        group = hallucinated if wrong and entry.get("probe") else probe_correct if entry.get("probe") else ordinary
        group.append(item)
    first = max(1, count // 2)
    chosen = hallucinated[:first] + probe_correct[:1]
    chosen += ordinary[:count - len(chosen)]
    return chosen[:count]


class Runner:
    """Runs stages as ``python -m capxai`` processes, logs to ``OUT/logs``, times every stage, stops all on Ctrl-C.
    With ``in_process``, each stage is a call of ``capxai.cli.main`` in this process instead (one at a time: a
    command's output goes to ``sys.stdout`` and its training seeds the global random generators)."""

    def __init__(self, out: Path, threads: int, in_process: bool = False):
        self.out, self.threads, self.in_process = out, threads, in_process
        self.times: Dict[str, dict] = {}
        self.children: List[subprocess.Popen] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def run_chain(self, label: str, stages: Sequence[Stage], position: int = 0) -> None:
        bar = tqdm(total=len(stages), desc=f"{label:>9}", unit="stage", position=position, leave=True,
                   bar_format="{desc}: {n}/{total} stages |{bar:20}| {elapsed} {postfix}")
        try:
            for stage in stages:
                if self.stopping.is_set():
                    return
                key = stage.name if label == "demo" else f"{label} {stage.name}"
                if stage.done():
                    self._record(key, None, bar)
                else:
                    bar.set_postfix_str(f"{stage.name} (log: {self.out / 'logs' / label}.log)")
                    started = time.perf_counter()
                    self._run(label, stage.arguments())
                    self._record(key, time.perf_counter() - started, bar)
                bar.update(1)
        finally:
            bar.set_postfix_str("")
            bar.close()

    def _run(self, log_name: str, arguments: List[str]) -> None:
        log = self.out / "logs" / f"{log_name}.log"
        with open(log, "a") as handle:
            handle.write(f"\n$ capxai {' '.join(arguments)}\n")
            handle.flush()
            code = self._call(arguments, handle) if self.in_process else self._spawn(arguments, handle)
        if code != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:])
            raise RuntimeError(f"capxai {arguments[0]} failed (exit {code}); the end of {log}:\n{tail}")

    def _spawn(self, arguments: List[str], log) -> int:
        environment = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                       "PYTHONUNBUFFERED": "1"}
        with self.lock:  # stop() cannot slip between the check and the registration
            if self.stopping.is_set():
                raise KeyboardInterrupt
            child = subprocess.Popen([sys.executable, "-m", "capxai", *arguments], stdout=log,
                                     stderr=subprocess.STDOUT, env=environment, start_new_session=True)
            self.children.append(child)
        return child.wait()

    @staticmethod
    def _call(arguments: List[str], log) -> int:
        """``capxai.cli.main(arguments)`` writing to ``log``; the random generators its training seeds (Python's,
        numpy's, torch's) are given back as they were, as if the command had run in a process of its own."""
        from capxai import cli

        python_state, numpy_state = random.getstate(), np.random.get_state()
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        try:
            with torch.random.fork_rng(devices=cuda), contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                code = cli.main(arguments)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        if code in (130, 143):  # Ctrl-C or SIGTERM stopped the command (its exit status): the demo stops too
            raise KeyboardInterrupt
        return code

    def _record(self, key: str, seconds: Optional[float], bar) -> None:
        with self.lock:
            if seconds is None:
                self.times.setdefault(key, {"seconds": None, "note": "reused"})
                bar.write(f"  {key}: reused (its result exists)")
            else:
                self.times[key] = {"seconds": round(seconds, 1)}
                bar.write(f"  {key}: done in {_duration(seconds)}")

    def stop(self) -> None:
        """Interrupts every running command (they stop cleanly and resume on the next run)."""
        with self.lock:
            self.stopping.set()
            for child in self.children:
                if child.poll() is None:  # SIGTERM: SIGINT is ignored in programs started in the background
                    child.send_signal(signal.SIGTERM)
        for child in list(self.children):
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)  # its own session: the whole group


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


# What a demo writes in its folder (and all that --overwrite removes).
DEMO_ENTRIES = ("scenes", "logs", "captioner-*", "eval-*", "explain-*", "finetune", "finetune-*",
                "report-images-*.json", "report.html", "report_files", ".report-*", "screenshots", TIMES_NAME,
                CONFIG_NAME)


def _check_folder(out: Path, config: DemoConfig, overwrite: bool) -> None:
    """A demo folder holds one demo: resume it when the settings match, refuse other settings unless ``overwrite``
    (which removes what the earlier demo wrote, and nothing else), refuse a non-empty folder no demo wrote."""
    recorded = out / CONFIG_NAME
    wanted = json.loads(json.dumps(dataclasses.asdict(config)))
    if out.exists() and not out.is_dir():
        raise SystemExit(f"python -m capxai.demo: --out {out} is a file; give a folder")
    if recorded.is_file():
        try:
            existing = json.loads(recorded.read_text())
        except ValueError as error:
            raise SystemExit(f"python -m capxai.demo: {recorded} is not valid json ({error}); pass --out another "
                             "folder, or remove that folder") from None
        if existing == wanted and not overwrite:
            return
        if not overwrite:
            raise SystemExit(f"python -m capxai.demo: {out} holds a demo run with other settings ({existing}); "
                             "pass --overwrite to start it afresh, or --out another folder")
        import shutil
        for pattern in DEMO_ENTRIES:
            for path in out.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif out.exists() and any(out.iterdir()):
        raise SystemExit(f"python -m capxai.demo: {out} is not empty and holds no demo (no {CONFIG_NAME}); pass "
                         "--out an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(recorded, wanted)


def captioner_devices(device: str, workers: int, captioners: Sequence[str] = CAPTIONERS) -> Dict[str, str]:
    """The ``--device`` of each captioner's commands, checked (``ValueError`` naming ``--device``): the CPU, or
    the visible GPUs in turn when there are several (else the one asked for, or cuda:0, for all)."""
    chosen = run_settings(device).device
    if chosen.type == "cpu":
        return {captioner: "cpu" for captioner in captioners}
    count = torch.cuda.device_count()
    if device in ("auto", "cuda") and workers > 1 and count > 1:
        return {captioner: f"cuda:{index % count}" for index, captioner in enumerate(captioners)}
    return {captioner: str(chosen) for captioner in captioners}


def run_demo(out: Path, config: DemoConfig, overwrite: bool = False, workers: int = len(CAPTIONERS),
             device: str = "cpu", in_process: bool = False) -> dict:
    """Runs (or resumes) the demo in ``out`` on ``device`` (see the module's docstring); returns the stage times
    written to ``OUT/demo.json``. ``in_process``: every command a call in this process, one after the other
    (``workers`` is then 1), rather than a process of its own."""
    unknown = [captioner for captioner in config.captioners if captioner not in CAPTIONERS]
    if unknown or not config.captioners:
        raise ValueError(f"DemoConfig.captioners must be some of {CAPTIONERS}, got {tuple(config.captioners)}")
    devices = captioner_devices(device, workers, config.captioners)  # checked before anything is written
    if len(set(devices.values())) == 1 and devices[config.captioners[0]] != "cpu":
        workers = 1  # one GPU: the captioners one after the other, each with the whole GPU
    if in_process:
        workers = 1  # the commands share this process's output streams and random generators
    _check_folder(out, config, overwrite)
    demo = Demo(out, config, devices)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    runner = Runner(out, threads, in_process)
    started = time.perf_counter()
    how = "in this process" if in_process else f"{workers} worker(s) x {threads} thread(s)"
    print(f"capxai demo -> {out} ({'quick' if config == QUICK else 'full'}: {config.scenes[0]} training scenes, "
          f"{config.epochs} epochs; {how} on {', '.join(sorted(set(devices.values())))}; logs in {out / 'logs'})")
    errors: List[BaseException] = []

    def chain(label, stages, position):
        try:
            runner.run_chain(label, stages, position)
        except BaseException as error:  # reported by the main thread; the other chain is stopped
            errors.append(error)
            runner.stop()

    try:
        runner.run_chain("demo", [demo.scenes_stage()])
        waiting = list(enumerate(config.captioners))  # taken by `workers` threads in turn
        lock = threading.Lock()

        def worker():
            while not errors:
                with lock:
                    if not waiting:
                        return
                    position, captioner = waiting.pop(0)
                chain(captioner, demo.captioner_stages(captioner), position)

        if workers > 1:
            threads_ = [threading.Thread(target=worker, daemon=True)
                        for _ in range(min(workers, len(config.captioners)))]
            for thread in threads_:
                thread.start()
            while any(thread.is_alive() for thread in threads_):
                for thread in threads_:
                    thread.join(timeout=0.5)
        else:
            worker()
        if errors:
            raise errors[0]
        runner.run_chain("demo", [demo.table_stage()])
        _write_times(out, runner, started, config, devices)  # the report shows them
        runner.run_chain("demo", [demo.report_stage()])
    except KeyboardInterrupt:
        print(f"\ninterrupted: stopping the workers; rerun the same command to resume ({out}); finished stages are "
              "kept", file=sys.stderr, flush=True)
        runner.stop()
        raise
    times = _write_times(out, runner, started, config, devices)
    total = times["total_seconds_this_run"]
    print(f"demo finished in {_duration(total)}: open {out / 'report.html'}")
    return times


def _write_times(out: Path, runner: Runner, started: float, config: DemoConfig, devices: Dict[str, str]) -> dict:
    gpus = sorted({torch.cuda.get_device_name(torch.device(d)) for d in devices.values() if d != "cpu"})
    times = {"stages": runner.times, "total_seconds_this_run": round(time.perf_counter() - started, 1),
             "machine": f"{os.cpu_count()} CPU cores" + (f", {', '.join(gpus)}" if gpus else ""),
             "devices": devices, "config": dataclasses.asdict(config), "definitions": _definitions(config)}
    atomic_write_json(out / TIMES_NAME, times)
    return times


def _definitions(config: DemoConfig) -> dict:
    """What the report reads of this run (capxai.report.html_report.RunDefinitions): the evaluated split and beam,
    the fine-tuning variants with their titles, the captioners fine-tuned."""
    return {"split": SPLIT, "beam_size": BEAM,
            "variants": [[method, FINETUNE_REGISTRY[method].title] for method in FINETUNE_METHODS],
            "finetuned": [captioner for captioner in FINETUNED if captioner in config.captioners]}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """``python -m capxai.demo``'s options (``--device`` is the commands' own, :class:`capxai.runtime.RunOptions`)."""

    out: Optional[Path] = option(None, type=Path, help="demo folder (default runs/demo, runs/demo-quick with --quick)")
    quick: bool = option(False, help="the same on a small set (about 10 minutes on 2 cores)")
    workers: int = option(len(CAPTIONERS), type=int, choices=range(1, len(CAPTIONERS) + 1),
                          help=f"captioners worked on at once (default {len(CAPTIONERS)}: on the CPU one thread each, "
                          "sharing the cores; on GPUs spread over them when there are several, else one after the "
                          "other)")
    overwrite: bool = option(False, help="start afresh: remove what an earlier demo wrote")


def build_parser() -> argparse.ArgumentParser:
    """``python -m capxai.demo``'s parser: its options are the fields of :class:`DemoOptions` and ``--device``."""
    parser = argparse.ArgumentParser(prog="python -m capxai.demo", description=__doc__.splitlines()[0])
    add_options(parser, DemoOptions)
    add_options(parser, RunOptions, only=["device"], help={"device": f"where every command runs: {DEVICES_HELP} "
                                                                    "(default auto)"})
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = QUICK if args.quick else DemoConfig()
    for name in ("SIGTERM", "SIGHUP"):  # stop the workers too: they run in sessions of their own
        signal.signal(getattr(signal, name), _interrupt)
    out = args.out or Path("runs/demo-quick" if args.quick else "runs/demo")
    try:
        run_demo(out, config, args.overwrite, args.workers, args.device)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError, OSError) as error:
        print(f"python -m capxai.demo: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
