"""``capxai evaluate`` as a library function: caption a split with a trained model, score the captions (BLEU,
METEOR, ROUGE-L, CIDEr, SPICE when available) and, given the split's objects, their hallucination (CHAIR, probe
rate); write the three result files into an output folder as one run.

The files of one evaluation (``captions_``, ``metrics_``, ``hallucination_{split}_beam{k}.json``) form one group of
the folder's manifest: replacing them first removes every file of the earlier run, so a new run never leaves an
older model's file beside its own. Each file carries the run id and the checkpoint's sha256 (``run``)."""
import dataclasses
import json
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from capxai._io import json_writer, text_writer, write_together
from capxai.interrupts import deferred
from capxai.data.captions import CaptionDataset
from capxai.evaluate.captioning import caption_dataset, references_of
from capxai.evaluate.metrics import caption_metrics
from capxai.evaluate.explanations import ExplanationSettings, evaluate_explanations, tables_markdown
from capxai.evaluate.hallucination import HallucinationData, hallucination_report
from capxai.outputs import OutputFolder
from capxai.runtime import RunSettings

RESULTS = ("captions", "metrics", "hallucination", "chair", "explanations")
SUFFIXES = {"explanations_tables": ".md"}


def result_group(split: str, beam_size: int) -> str:
    return f"{split}_beam{beam_size}"


def result_paths(out_dir, split: str, beam_size: int) -> Dict[str, Path]:
    """Where an evaluation of ``split`` with ``beam_size`` beams writes its files."""
    group = result_group(split, beam_size)
    paths = {name: Path(out_dir) / f"{name}_{group}.json" for name in RESULTS}
    paths["explanations_tables"] = Path(out_dir) / f"explanations_{group}.md"
    return paths


def check_outputs(out_dir, split: str, beam_size: int, overwrite: bool) -> OutputFolder:
    """Refuses, before any work, an output folder that is a file, result files capxai did not write, or an earlier
    run's results without ``overwrite``."""
    output = OutputFolder(out_dir, "evaluate")
    output.check_writable(result_paths(out_dir, split, beam_size).values(), overwrite,
                          group=result_group(split, beam_size))
    return output


def evaluate_split(model: torch.nn.Module, dataset: CaptionDataset, output: OutputFolder, beam_size: int,
                   max_length: int, hallucination: Optional[HallucinationData] = None,
                   stamp: Optional[dict] = None, progress: bool = True,
                   explanations: Optional[ExplanationSettings] = None, run: Optional[RunSettings] = None,
                   guidance: Optional[Callable] = None, contrastive=None) -> dict:
    """Captions ``dataset`` with ``model`` (beam search), scores it and writes the results into ``output`` (see
    :func:`check_outputs`). ``stamp`` (e.g. the checkpoint's path and sha256) is stored in every file with the run
    id. With ``hallucination``: CHAIR (also alone as ``chair_*.json``, ``{overall, imgToEval}`` as CHAIR's tools
    write it), frequent-word P/R/F1, probe rate; with ``explanations`` too: grounding, ablation and detection of
    every method (``explanations_*.json`` and ``.md``). Returns ``{"overall", "chair"?, "probes"?,
    "explanations"?, "paths"}``. The earlier run's files are removed only once the new results are computed, so an
    interrupted evaluation keeps them.

    ``guidance``: beam search's score adjustment (explanation-guided decoding,
    :class:`capxai.explain.guided_decoding.VisualShareGuidance`) for the captions and the explained captions;
    ``contrastive``: visual contrastive decoding of the captions
    (:class:`capxai.models.contrastive_decoding.VCDSettings`; not with explanations).

    ``run``: its workers decode the images (the model stays where it is). Under torchrun every process captions and
    explains its share of the images; process 0 scores, writes and returns the results, the others return
    ``{"paths": []}``; the files equal those of one process (the run stamp records how many there were)."""
    run = run if run is not None else RunSettings()
    progress = progress and run.rank == 0
    if explanations is not None and contrastive is not None:
        raise ValueError("explanations of captions decoded by visual contrastive decoding are not made; evaluate the "
                         "explanations without --vcd")
    if explanations is not None and hallucination is None:
        raise ValueError("evaluating explanations needs the split's boxes: give the instances (and synonyms) file")
    split = dataset.split
    captions = caption_dataset(model, dataset, beam_size, max_length, progress=progress, run=run, guidance=guidance,
                               contrastive=contrastive)
    report = {}
    if explanations is not None:
        explanations = dataclasses.replace(explanations, beam_size=beam_size, max_length=max_length,
                                           guidance=guidance)
        report["explanations"] = evaluate_explanations(model, dataset, hallucination, explanations,
                                                       progress=progress, run=run)
    if run.rank != 0:
        return {"paths": []}
    scores = caption_metrics(references_of(dataset), captions, spice=True,
                             metrics=("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE"))
    report["overall"] = scores["overall"]
    if hallucination is not None:
        report.update(hallucination_report(captions, hallucination))
    stamp = {"run_id": output.run_id, "split": split, "beam_size": beam_size, "images": len(captions),
             **(stamp or {})}
    paths = result_paths(output.path, split, beam_size)
    writers = {paths["captions"]: json_writer([{"image_id": image_id, "caption": caption, "run_id": output.run_id}
                                               for image_id, caption in captions.items()]),
               paths["metrics"]: json_writer({**scores, "run": stamp})}
    if "chair" in report:
        writers[paths["hallucination"]] = json_writer({
            **{key: report[key] for key in ("chair", "chair_probes", "frequent_words", "probes") if key in report},
            "run": stamp})
        writers[paths["chair"]] = json_writer({**report["chair"], "run": stamp})
    if "explanations" in report:
        writers[paths["explanations"]] = json_writer({**report["explanations"], "run": stamp})
        writers[paths["explanations_tables"]] = text_writer(tables_markdown(
            report["explanations"], f"Explanations of {split} (beam {beam_size}), run {output.run_id}"))
    # All or none (a full disk leaves the earlier run whole); then the earlier run's files this one did not
    # replace go, so that two runs' results are never left side by side.
    with deferred():  # in place and recorded, or neither: a stop between would orphan them
        written = write_together(writers)
        group = result_group(split, beam_size)
        output.remove_group(group, keep=written)
        output.record(written, group)
    return {**report, "paths": written}



def load_evaluation(out_dir, split: str, beam_size: int) -> dict:
    """The results one evaluation wrote (``{"captions", "metrics", "hallucination"?}``), refused when the files are
    not all of one run (what the report reads: results of two runs are never shown as one)."""
    results, runs = {}, {}
    for name, path in result_paths(out_dir, split, beam_size).items():
        if not path.is_file() or path.suffix != ".json":
            continue
        try:
            results[name] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid json ({error})") from None
        if name == "captions":
            runs[path] = {entry.get("run_id") for entry in results[name] if isinstance(entry, dict)}
        else:
            runs[path] = {(results[name].get("run") or {}).get("run_id")}
    if "metrics" not in results:
        raise FileNotFoundError(f"{result_paths(out_dir, split, beam_size)['metrics']} does not exist; run capxai "
                                "evaluate first")
    found = set().union(*runs.values())
    if len(found) != 1 or None in found:
        listed = ", ".join(f"{path.name}: {sorted(map(str, ids))}" for path, ids in runs.items())
        raise ValueError(f"{out_dir} holds results of different runs ({listed}); rerun capxai evaluate with "
                         "--overwrite")
    return results
