"""Caption metrics through pycocoevalcap, the field's reference implementation: BLEU-1..4, METEOR, ROUGE-L, CIDEr
with its PTB tokenizer (Java), and SPICE when its Stanford CoreNLP jars are present (it downloads them at first use,
which fails without network: then SPICE is skipped with one line saying why and the other metrics still run).
Results are ``{"overall": {...}, "imgToEval": {...}}``, the format other captioning tools (e.g. CHAIR) read."""
import atexit
import contextlib
import functools
import io
import shutil
import sys
from pathlib import Path
from typing import Dict, Mapping, Sequence

from capxai._optional import require
from capxai._io import atomic_write_json, raise_if_no_space


def _spice_available() -> bool:
    from pycocoevalcap.spice import spice

    lib = Path(spice.__file__).parent / "lib"
    return shutil.which("java") is not None and any(lib.glob("stanford-corenlp-*models*.jar"))


METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE")


@functools.cache
def shared_meteor():
    """One METEOR scorer per process, reused by every call: its Java process loads the paraphrase tables at start
    (5-15 s on these machines), after which a call costs milliseconds (it writes nothing to its unread stderr pipe:
    checked over 50 calls). Stopped at exit, and replaced if a call fails (``caption_metrics``)."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    atexit.register(_stop_meteor, meteor)
    return meteor


def _stop_meteor(meteor) -> None:
    """Kills METEOR's Java process without its ``__del__``, which waits for a lock that a failed call leaves held."""
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()
    if meteor.lock.locked():
        meteor.lock.release()


def _scorers(metrics: Sequence[str]):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.spice.spice import Spice

    makers = {"Bleu": (lambda: Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]),
              "METEOR": (shared_meteor, ["METEOR"]),
              "ROUGE_L": (Rouge, ["ROUGE_L"]), "CIDEr": (Cider, ["CIDEr"]), "SPICE": (Spice, ["SPICE"])}
    return [(makers[name][0](), makers[name][1]) for name in metrics]


def caption_metrics(references: Mapping[int, Sequence[str]], candidates: Mapping[int, str],
                    spice: bool = True, metrics: Sequence[str] = METRICS) -> Dict[str, dict]:
    """Corpus metrics of ``candidates`` (one caption per image id) against ``references`` (several per image id).

    ``metrics`` picks a subset of ``METRICS`` (e.g. ``("CIDEr",)`` for fast validation); SPICE runs only with
    ``spice=True`` and its jars present.
    Returns ``{"overall": {metric: value}, "imgToEval": {image_id: {metric: value}}}``.
    """
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ValueError(f"caption_metrics: unknown metrics {unknown}; choose from {METRICS}")
    if not candidates:
        raise ValueError("caption_metrics: no candidate captions")
    missing = [image_id for image_id in candidates if not references.get(image_id)]
    if missing:
        raise ValueError(f"caption_metrics: no reference captions for image ids {missing[:5]}")
    empty = [image_id for image_id, caption in candidates.items() if not str(caption).strip()]
    if empty:
        raise ValueError(f"caption_metrics: empty candidate captions for image ids {empty[:5]}")
    require("pycocoevalcap", "caption_metrics (BLEU, METEOR, ROUGE-L, CIDEr)")
    if shutil.which("java") is None:
        raise RuntimeError("caption_metrics: pycocoevalcap needs Java (java on PATH) for tokenisation and METEOR")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    image_ids = list(candidates)
    tokenizer = PTBTokenizer()
    try:
        gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in image_ids})
        res = tokenizer.tokenize({i: [{"caption": candidates[i]}] for i in image_ids})
    except OSError as error:  # it writes the captions to a temporary file beside its jar: name where
        raise_if_no_space(error, Path(sys.modules[PTBTokenizer.__module__].__file__).parent /
                          "(the PTB tokenizer's temporary file)", existed=False)
        raise
    wants_spice = spice and "SPICE" in metrics
    with_spice = wants_spice and _spice_available()
    if wants_spice and not with_spice:
        print("caption_metrics: SPICE skipped: its Stanford CoreNLP jars are not installed and cannot be "
              "downloaded here (run pycocoevalcap's spice/get_stanford_models.py with network to enable it)",
              file=sys.stderr)
    overall: Dict[str, float] = {}
    per_image: Dict[int, Dict[str, float]] = {i: {} for i in image_ids}
    chosen = [name for name in metrics if name != "SPICE" or with_spice]
    for scorer, names in _scorers(chosen):
        shared = names == ["METEOR"]
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap's BLEU prints its n-gram counts
                score, scores = scorer.compute_score(gts, res)
        except Exception:
            if shared:  # a broken Java process is not reused
                _stop_meteor(scorer)
                shared_meteor.cache_clear()
            raise
        scores_per_name = scores if len(names) > 1 else [scores]
        for name, corpus_value, image_values in zip(names, score if len(names) > 1 else [score], scores_per_name):
            overall[name] = float(corpus_value)
            for image_id, value in zip(gts.keys(), image_values):
                per_image[image_id][name] = value if isinstance(value, dict) else float(value)
        close = getattr(scorer, "close", None)
        if close is not None and not shared:
            close()
    return {"overall": overall, "imgToEval": {str(i): {"image_id": i, **v} for i, v in per_image.items()}}


def write_metrics(path, results: Dict[str, dict]) -> Path:
    """Writes ``{"overall", "imgToEval"}`` json atomically."""
    return atomic_write_json(path, results)
