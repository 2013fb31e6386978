"""``capxai report RUN_DIR``: one static HTML page (``RUN_DIR/report.html``, its pictures in ``RUN_DIR/report_files``)
of what ``capxai explain --images`` wrote in ``RUN_DIR`` (every method's map of every word of the images, a
vision-language model's prompt relevance with the earlier words'), or from what the demo's commands wrote there:

- ``explain-CAPTIONER/METHOD/explanation.pt`` and ``report-images-CAPTIONER.json`` (``capxai explain`` of a few test
  images; the json names them, their captions and hallucinated words): per word, every method's heatmap side by
  side, LRP's linguistic explanation and the attention map, chosen by clicking the word;
- ``explain-CAPTIONER-contrast/lrp/explanation.pt`` when there (``capxai explain --method lrp --contrast ...`` of
  the same images and captions): a third kind of panel, LRP of "this word rather than that one";
- ``eval-CAPTIONER/`` (``capxai evaluate --explanations``): the explanation tables and plots;
- ``finetune/finetune_table.md`` (``capxai finetune-table``) and ``eval-CAPTIONER-VARIANT/``: the fine-tuning
  table and the same images' captions before and after fine-tuning, hallucinated words marked;
- ``demo.json``: how long each stage took, and the definitions the demo ran with (:class:`RunDefinitions`: the
  evaluated split and beam, the fine-tuning variants and their titles, the captioners fine-tuned).

The page reads nothing from the network and needs no server: open it from the disk.
"""
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from capxai._io import atomic_path, raise_if_no_space, staging_folder, sync_folder
from capxai.evaluate.run import result_group
from capxai.evaluate.settings import EvaluateOptions
from capxai.explain import METHODS, Explanation
from capxai.report.figures import overlay
from capxai.report.page import document, escape, markdown_to_html, table
from capxai.report.plots import grounding_plot, roc_plot
from capxai.interrupts import stoppable
from capxai.data.captions import path_under

REPORT_NAME, FILES_NAME = "report.html", "report_files"
CONTRAST = "lrp-contrast"  # the contrastive LRP panel's key among an example's heatmaps


@dataclasses.dataclass(frozen=True)
class RunDefinitions:
    """What a run evaluated, as the demo records it in ``demo.json`` ("definitions"): the split and beam of its
    evaluations, its fine-tuning variants (``eval-CAPTIONER-NAME``) with their titles, the captioners it fine-tuned
    (None: any). A folder without them gets ``capxai evaluate``'s defaults and no fine-tuning variants."""

    split: str = EvaluateOptions().split
    beam_size: int = EvaluateOptions().beam_size
    variants: Tuple[Tuple[str, str], ...] = ()
    finetuned: Optional[Tuple[str, ...]] = None

    @property
    def group(self) -> str:
        """The evaluations' result group, e.g. "test_beam3"."""
        return result_group(self.split, self.beam_size)


def definitions_of(run_dir: Path) -> RunDefinitions:
    """The definitions ``run_dir``'s ``demo.json`` records (see :class:`RunDefinitions`), checked."""
    path = run_dir / "demo.json"
    recorded = _read_json(path).get("definitions") if path.is_file() else None
    if recorded is None:
        return RunDefinitions()
    try:
        variants = tuple((str(name), str(title)) for name, title in recorded.get("variants", ()))
        finetuned = recorded.get("finetuned")
        return RunDefinitions(split=str(recorded["split"]), beam_size=int(recorded["beam_size"]), variants=variants,
                              finetuned=None if finetuned is None else tuple(map(str, finetuned)))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: its definitions are not the demo's (split, beam_size, variants, finetuned): "
                         f"{error!r}") from None


def method_title(method: str) -> str:
    """A method's name on the page: its explainer's ``title`` (the registry's), else the registered name."""
    return getattr(METHODS.get(method), "title", "") or method


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} ({error})") from None


def captioners_of(run_dir: Path, group: Optional[str] = None) -> List[str]:
    """The captioners with an explanation evaluation in ``run_dir`` (``eval-NAME/explanations_GROUP.json``, GROUP
    the run's, e.g. test_beam3); ``eval-NAME-VARIANT`` of a found NAME is that captioner fine-tuned, not a captioner
    (a name may hold "-": ``hf-vit-gpt2``)."""
    group = group or definitions_of(run_dir).group
    names = sorted(path.parent.name[len("eval-"):] for path in run_dir.glob(f"eval-*/explanations_{group}.json"))
    found = [name for name in names if not any(name.startswith(other + "-") for other in names)]
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no eval-CAPTIONER/explanations_{group}.json; "
                                "run the demo (make demo) or capxai evaluate --explanations first")
    return found


def _url(*parts) -> str:
    """A relative URL of a picture under the report's folder, every part percent-encoded: a captioner is named by a
    folder, which may hold "#", "?" or "%" (anything but "/"), and its pictures must still load."""
    return "/".join(quote(str(part), safe="") for part in parts)


def _load_explanations(folder: Path) -> Dict[str, Explanation]:
    return {method: Explanation.load(folder / method / "explanation.pt")
            for method in METHODS if (folder / method / "explanation.pt").is_file()}


def _load_contrast(folder: Path, plain: Explanation) -> Optional[Explanation]:
    """The contrastive LRP explanation of the report's images, when the run made one: the same captions as the
    plain explanations, or an error (a contrast of other images would be shown beside the wrong words)."""
    path = folder / "lrp" / "explanation.pt"
    if not path.is_file():
        return None
    contrast = Explanation.load(path)
    if contrast.contrast is None or contrast.tokens.shape != plain.tokens.shape or \
            not torch.equal(contrast.tokens, plain.tokens):
        raise ValueError(f"{path} is not a contrastive explanation of the report's captions (explain-CAPTIONER); "
                         f"rerun capxai explain --contrast with the same --images and --captions, or remove {folder}")
    return contrast


def _example(captioner: str, index: int, chosen: dict, explanations: Dict[str, Explanation],
             heatmaps_of: Dict[str, np.ndarray], image: np.ndarray, files: Path, prefix: str,
             contrast: Optional[Explanation] = None) -> dict:
    """Writes the example's pictures (the image and, per method and word, its heatmap over the image) and returns
    its data for the page's script (with ``contrast``, each word's contrast word and LRP map)."""
    folder = files / captioner / str(index)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / "image.png")
    first = next(iter(explanations.values()))
    length = int(first.lengths[index])
    words = first.words[index][:length] if first.words else [str(int(i)) for i in first.tokens[index][:length]]
    heatmaps = {}
    for method, all_maps in heatmaps_of.items():
        maps = all_maps[index]
        heatmaps[method] = []
        for t in range(length):
            name = f"{method}_{t:02d}.png"
            Image.fromarray(overlay(image, maps[t])).save(folder / name)
            heatmaps[method].append(_url(prefix, captioner, index, name))
    relevance, prompt = _linguistic(explanations.get("lrp"), index, length)
    hallucinated = [t for t, word in enumerate(words) if word in set(chosen.get("hallucinated", []))]
    contrast_words = None
    if contrast is not None:
        contrast_words = (contrast.contrast_words[index][:length] if contrast.contrast_words else
                          [str(int(i)) for i in contrast.contrast[index][:length]])
    fed_first = first.settings.get("prompt_end", "<start>")  # a VLM's first word follows its prompt's last token
    return {"words": words, "fed": [fed_first] + words[:-1], "heatmaps": heatmaps, "word_relevance": relevance,
            **prompt, "contrast_words": contrast_words,
            "probabilities": [round(float(p), 4) for p in first.probabilities[index][:length]],
            "hallucinated": hallucinated, "initial": hallucinated[0] if hallucinated else 0,
            "image": _url(prefix, captioner, index, "image.png")}


def _linguistic(lrp: Optional[Explanation], index: int, length: int) -> Tuple[Optional[list], dict]:
    """LRP's relevance of each word's preceding words (``[t][i]``, i <= t) and, for a vision-language model, of its
    prompt's text tokens (``{"prompt": words, "prompt_relevance": [t][j]}``), each word's row divided by its largest
    magnitude over both (docs/LRP_RULES.md "Linguistic explanation")."""
    if lrp is None or lrp.word_relevance is None:
        return None, {}
    rows = lrp.word_relevance[index, :length, :length].detach().double().cpu()
    prompt_rows = None
    if lrp.prompt_relevance is not None and lrp.prompt_words and lrp.prompt_words[index]:
        prompt_rows = lrp.prompt_relevance[index, :length, :len(lrp.prompt_words[index])].detach().double().cpu()
    scale = rows.abs().amax(1) if prompt_rows is None else torch.maximum(rows.abs().amax(1),
                                                                          prompt_rows.abs().amax(1))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    relevance = [[round(float(v), 4) for v in (rows / scale)[t, :t + 1]] for t in range(length)]
    if prompt_rows is None:
        return relevance, {}
    return relevance, {"prompt": lrp.prompt_words[index],
                       "prompt_relevance": [[round(float(v), 4) for v in row] for row in prompt_rows / scale]}


def _example_html(key: str, example: dict, chosen: dict, methods: List[str]) -> str:
    probe = chosen.get("probe")
    about = escape(chosen["about"]) if "about" in chosen else (
        f"probe image: shows a {escape(probe['present'])}, its usual partner {escape(probe['absent'])} is absent"
        if probe else "ordinary image")
    words = " ".join(
        f"<span class=\"word{' hallucinated' if t in example['hallucinated'] else ''}\" data-t=\"{t}\">"
        f"{escape(word)}</span>" for t, word in enumerate(example["words"]))
    panels = [f"<figure><img src=\"{escape(example['image'])}\" alt=\"the image\"><figcaption>image</figcaption>"
              "</figure>"]
    for method in methods:
        source = example["heatmaps"][method][example["initial"]]
        panels.append(f"<figure><img class=\"heatmap\" data-method=\"{escape(method)}\" src=\"{escape(source)}\" "
                      f"alt=\"{escape(method)}\"><figcaption>{escape(method_title(method))}"
                      "</figcaption></figure>")
    if CONTRAST in example["heatmaps"]:
        source = example["heatmaps"][CONTRAST][example["initial"]]
        panels.append(f"<figure><img class=\"heatmap\" data-method=\"{CONTRAST}\" src=\"{escape(source)}\" "
                      f"alt=\"LRP, contrastive\"><figcaption>LRP: rather than <b class=\"contrast-word\">"
                      f"{escape(example['contrast_words'][example['initial']])}</b></figcaption></figure>")
    return (f"<section class=\"example\" data-example=\"{escape(key)}\">\n"
            f"<h3>Image {escape(chosen['image_id'])} <span class=\"note\">({about})</span></h3>\n"
            f"<div class=\"caption\">{words}</div>\n"
            f"<div>Explaining <b class=\"selected-word\"></b></div>\n"
            f"<div class=\"panels\">{''.join(panels)}</div>\n<div class=\"linguistic\"></div>\n</section>")


def _marked_caption(entry: Optional[dict]) -> str:
    """A caption with CHAIR's hallucinated words marked (``entry``: CHAIR's imgToEval entry)."""
    if entry is None:
        return "(not captioned)"
    wrong = set(entry.get("hallucination_idxs", []))
    return " ".join(f"<span class=\"hallucinated\">{escape(word)}</span>" if i in wrong else escape(word)
                    for i, word in enumerate(entry["words"]))


def _before_after(run_dir: Path, captioner: str, definitions: RunDefinitions, limit: int = 8) -> str:
    if definitions.finetuned is not None and captioner not in definitions.finetuned:
        return f"<p class=\"note\">This run does not fine-tune the {escape(captioner)} captioner.</p>"
    variants = (("", "cross-entropy"),) + definitions.variants
    chairs = {}
    for variant, _ in variants:
        folder = run_dir / "-".join(part for part in ("eval", captioner, variant) if part)
        path = folder / f"hallucination_{definitions.group}.json"
        if path.is_file():
            chairs[variant] = _read_json(path)["chair"]["imgToEval"]
    if len(chairs) < 2:
        return "<p class=\"note\">No fine-tuned evaluations yet.</p>"
    before = chairs[""]
    # images where some variant hallucinates: where fine-tuning could have changed something
    chosen = [image_id for image_id, entry in before.items()
              if any(chairs[v].get(image_id, {}).get("hallucination_idxs") for v in chairs)][:limit]
    rows = "".join("<tr><td>" + escape(image_id) + "</td>" + "".join(
        f"<td>{_marked_caption(chairs[v].get(image_id)) if v in chairs else ''}</td>" for v, _ in variants) + "</tr>"
        for image_id in chosen)
    head = "".join(f"<th>{escape(title)}</th>" for _, title in variants)
    return (f"<table><thead><tr><th>image</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
            f"<p class=\"note\">The first {len(chosen)} test images whose caption names an absent object under some "
            "model (wavy red: CHAIR's hallucinated words).</p>")


def _times_html(run_dir: Path) -> str:
    path = run_dir / "demo.json"
    if not path.is_file():
        return ""
    times = _read_json(path)
    rows = [[stage, f"{entry['seconds']:.0f} s" if entry.get("seconds") is not None else entry.get("note", "")]
            for stage, entry in times.get("stages", {}).items()]
    return ("<h2>How long it took</h2>" + table(["stage", "time"], rows) +
            f"<p class=\"note\">Whole run: {times.get('total_seconds_this_run', 0):.0f} s on "
            f"{escape(times.get('machine', '?'))} (stages reused from an earlier run took no time).</p>")


def build_report(run_dir, overwrite: bool = False, progress: bool = True) -> Path:
    """Writes ``RUN_DIR/report.html`` and ``RUN_DIR/report_files``; refuses to replace them without ``overwrite``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder")
    target, files = run_dir / REPORT_NAME, run_dir / FILES_NAME
    if (target.exists() or files.exists()) and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    explained_images = is_explain_output(run_dir)
    if not explained_images:
        definitions = definitions_of(run_dir)
        captioners = captioners_of(run_dir, definitions.group)
    staging = staging_folder(run_dir, ".report-")  # the user's folder mode: others who open the page see the pictures
    try:
        body, examples = (_explained_images_body(run_dir, staging, progress) if explained_images else
                          _body(run_dir, captioners, definitions, staging, progress))
        # The page is written (not yet renamed) before the pictures are swapped in: a disk that fills up on the
        # page leaves the earlier page and its pictures as they were.
        with atomic_path(target) as page:
            with open(page, "w") as stream:
                stream.write(document("capxai report", body, {"examples": examples}))
            if files.exists():
                shutil.rmtree(files)
            staging.rename(files)
            sync_folder(run_dir)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise_if_no_space(error, files, files.exists(), staging)
        raise
    return target


def is_explain_output(folder: Path) -> bool:
    """Whether ``folder`` is what ``capxai explain --images`` wrote (``METHOD/explanation.pt``) rather than a demo
    run (``eval-CAPTIONER/``)."""
    return bool(_load_explanations(folder)) and not any(folder.glob("eval-*"))


def _explained_images_body(run_dir: Path, files: Path, progress: bool):
    """The page of a ``capxai explain --images`` folder: per image, its caption, every method's map of each word,
    and LRP's relevance of the preceding words (and of a vision-language model's prompt)."""
    explanations = _load_explanations(run_dir)
    first = next(iter(explanations.values()))
    images = first.run.get("images")
    if not images or len(images) != first.tokens.shape[0]:
        raise ValueError(f"{run_dir}: its explanations do not name their {first.tokens.shape[0]} image files (written "
                         "by an older capxai); run capxai explain --images again")
    missing = [path for path in images if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"the explained image {missing[0]} is gone; the page shows the maps over it")
    methods = [m for m in METHODS if m in explanations]
    heatmaps_of = {m: e.heatmaps().detach().float().cpu().numpy() for m, e in explanations.items()}
    height, width = next(iter(heatmaps_of.values())).shape[-2:]
    prompt = first.settings.get("prompt")
    parts = ["<h1>capxai: explanations</h1>",
             f"<p>{len(images)} image(s) explained by {', '.join(escape(method_title(m)) for m in methods)}"
             + (f"; the model read the prompt <code>{escape(prompt)}</code> with each image" if prompt else "")
             + ".</p>",
             "<p class=\"note\">Heatmaps: red supports the word, blue speaks against it, each map scaled to its own "
             "largest magnitude <span class=\"legend\"></span>. Click a word of a caption to see its explanations"
             + ("; LRP's relevance of the prompt's words is shown in italics before the caption's" if prompt else "")
             + ".</p>"]
    examples = {}
    for index, path in enumerate(stoppable(tqdm(images, desc="report: examples", disable=not progress))):
        image = np.asarray(Image.open(path).convert("RGB").resize((width, height)), dtype=np.float32) / 255.0
        chosen = {"image_id": Path(path).name, "about": first.settings.get("family", "captioner")}
        key = f"explained-{index}"
        examples[key] = _example("explained", index, chosen, explanations, heatmaps_of, image, files, FILES_NAME)
        parts.append(_example_html(key, examples[key], chosen, methods))
    return "\n".join(parts), examples


def _body(run_dir: Path, captioners: List[str], definitions: RunDefinitions, files: Path, progress: bool):
    group = definitions.group
    evaluations = {c: _read_json(run_dir / f"eval-{c}" / f"explanations_{group}.json") for c in captioners}
    parts = ["<h1>capxai: explaining and improving image captioners</h1>",
             "<p>Every word a captioner says, explained by LRP, Grad-CAM, Guided Grad-CAM, Guided Backprop, "
             "Gradient x Input and attention; the explanations measured, used to find hallucinated objects, and "
             "LRP-inference fine-tuning (Sun et al., Information Fusion 2022) and capxai's explanation-gated "
             "fine-tuning against baseline fine-tuning, on the built-in scenes.</p>",
             "<p class=\"note\">Heatmaps: red supports the word, blue speaks against it, each map scaled to its own "
             "largest magnitude <span class=\"legend\"></span> (Grad-CAM and attention have no sign: dark to "
             "yellow). Click a word of a caption to see its explanations.</p>"]
    examples = {}
    for captioner in captioners:
        chosen_path = run_dir / f"report-images-{captioner}.json"
        folder = run_dir / f"explain-{captioner}"
        if not chosen_path.is_file() or not folder.is_dir():
            continue
        chosen = _read_json(chosen_path)
        if not isinstance(chosen, list) or not all(isinstance(item, dict) and {"file", "image_id"} <= set(item)
                                                   and isinstance(item["file"], str) for item in chosen):
            raise ValueError(f"{chosen_path} is not the demo's list of report images (each with file and image_id)")
        paths = [path_under(run_dir / "scenes", item["file"], what="the run's scenes folder") for item in chosen]
        explanations = _load_explanations(folder)
        if not explanations:
            continue
        methods = [m for m in METHODS if m in explanations]
        heatmaps_of = {m: e.heatmaps().detach().float().cpu().numpy() for m, e in explanations.items()}  # once
        contrast = _load_contrast(run_dir / f"explain-{captioner}-contrast", next(iter(explanations.values())))
        if contrast is not None:
            heatmaps_of[CONTRAST] = contrast.heatmaps().detach().float().cpu().numpy()
        size = next(iter(heatmaps_of.values())).shape[-1]
        parts.append(f"<h2>Explanations: {escape(captioner)} captioner</h2>")
        for index, (item, path) in enumerate(stoppable(tqdm(list(zip(chosen, paths)),
                                                            desc=f"report: {captioner} examples",
                                                            disable=not progress))):
            image = np.asarray(Image.open(path).convert("RGB").resize((size, size)), dtype=np.float32) / 255.0
            key = f"{captioner}-{index}"
            examples[key] = _example(captioner, index, item, explanations, heatmaps_of, image, files, FILES_NAME,
                                     contrast)
            parts.append(_example_html(key, examples[key], item, methods))
    parts.append("<h2>Captions and fine-tuning</h2>")
    table_md = run_dir / "finetune" / "finetune_table.md"
    if table_md.is_file():
        parts.append(markdown_to_html(table_md.read_text(), heading_offset=2))
    for captioner in captioners:
        parts.append(f"<h3>Captions before and after fine-tuning: {escape(captioner)}</h3>")
        parts.append(_before_after(run_dir, captioner, definitions))
    parts.append("<h2>Measuring the explanations</h2>")
    grounding_plot(evaluations, files / "grounding.png")
    roc_plot(evaluations, files / "roc.png")
    parts.append(f"<div class=\"plots\"><img src=\"{FILES_NAME}/grounding.png\" alt=\"grounding over thresholds\">"
                 f"<img src=\"{FILES_NAME}/roc.png\" alt=\"ROC curves of hallucination detection\"></div>")
    for captioner in captioners:
        markdown = run_dir / f"eval-{captioner}" / f"explanations_{group}.md"
        if markdown.is_file():
            parts.append(f"<h3>{escape(captioner)} captioner</h3>")
            body = markdown.read_text().partition("\n")[2]  # without its title: the heading above says it
            parts.append(markdown_to_html(body, heading_offset=2))
    parts.append(_times_html(run_dir))
    return "\n".join(parts), examples
