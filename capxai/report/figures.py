"""Figures of explanations (matplotlib, no display needed): per word, the heatmap over the image and the caption's
preceding words coloured by their relevance; signed relevance in diverging colours centred at 0."""
import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from capxai._io import atomic_path
from capxai._optional import require
from capxai.explain import Explanation

require("matplotlib", "capxai's figures (capxai report, the word figures of capxai explain)").use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIGNED_COLOURS, UNSIGNED_COLOURS = "bwr", "inferno"


def _safe(word: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", word) or "word"


def heatmap_rgba(heatmap: np.ndarray) -> np.ndarray:
    """``[H, W, 4]`` colours in [0, 1] of ``heatmap [H, W]``: diverging (blue < 0 < red) and centred at 0 when it has
    both signs, sequential from 0 when it has none negative; the opacity grows with the magnitude, so that an image
    under it stays visible where the map is near 0."""
    limit = float(np.abs(heatmap).max()) or 1.0
    signed = bool((heatmap < 0).any())
    colours = plt.get_cmap(SIGNED_COLOURS if signed else UNSIGNED_COLOURS)
    rgba = colours(0.5 + 0.5 * heatmap / limit if signed else heatmap / limit)
    rgba[..., 3] = np.clip(np.abs(heatmap) / limit, 0, 1) ** 0.5 * 0.85
    return rgba


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """``heatmap [H, W]`` over ``image [H, W, 3]`` (in [0, 1], drawn in grey) as one ``uint8 [H, W, 3]`` picture."""
    rgba = heatmap_rgba(heatmap)
    grey = np.repeat(image.mean(-1, keepdims=True), 3, axis=-1)
    mixed = grey * (1 - rgba[..., 3:]) + rgba[..., :3] * rgba[..., 3:]
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def draw_heatmap(axis, image: np.ndarray, heatmap: np.ndarray, title: str) -> None:
    """``image [H, W, 3]`` in [0, 1] in grey under ``heatmap [H, W]`` coloured by :func:`heatmap_rgba`."""
    axis.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=1)
    axis.imshow(heatmap_rgba(heatmap))
    axis.set_title(title, fontsize=9)
    axis.axis("off")


def draw_words(axis, words: Sequence[str], relevance: Optional[np.ndarray], target: str) -> None:
    """The words fed before ``target`` (``<start>`` first), each on a box coloured by its normalised relevance
    (red supports the word, blue opposes it), then the target in bold; lines wrap at the axis' width."""
    axis.axis("off")
    colours = plt.get_cmap(SIGNED_COLOURS)
    renderer = axis.figure.canvas.get_renderer()
    to_axis = axis.transAxes.inverted()
    x, y = 0.0, 0.85
    items = [(word, 0.0 if relevance is None else float(relevance[i]), False) for i, word in enumerate(words)]
    for word, value, bold in items + [(target, 0.0, True)]:
        text = axis.text(x, y, word, fontsize=8, va="top", transform=axis.transAxes, weight="bold" if bold else None,
                         bbox=None if bold else dict(facecolor=colours(0.5 + 0.5 * value), edgecolor="none", pad=1))
        right = text.get_window_extent(renderer).transformed(to_axis).x1
        if right > 1.0 and x > 0.0:  # wrap
            x, y = 0.0, y - 0.35
            text.set_position((x, y))
            right = text.get_window_extent(renderer).transformed(to_axis).x1
        x = right + 0.03


def save_figure(figure, path: Path, dpi: int = 100) -> Path:
    """PNG written atomically."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return path


def word_figures(explanation: Explanation, display_images: torch.Tensor, out_dir, names: Sequence[str],
                 fed_words: Optional[List[List[str]]] = None) -> List[Path]:
    """One PNG per image and explained word: ``out_dir/NAME/TT_WORD.png`` with the heatmap over the image and the
    preceding words coloured by the method's word relevance (when it gives one). ``display_images [B, H, W, 3]``
    in [0, 1] at the explained resolution; ``fed_words[b]``: ``<start>`` and the caption's words."""
    heatmaps = explanation.heatmaps().detach().cpu().numpy()
    written = []
    for b, name in enumerate(names):
        targets = explanation.words[b] if explanation.words else [str(int(i)) for i in explanation.tokens[b]]
        fed = fed_words[b] if fed_words else ["<start>"] + targets[:-1]
        prompt = explanation.prompt_words[b] if explanation.prompt_words else []
        for t in range(int(explanation.lengths[b])):
            figure, (top, bottom) = plt.subplots(2, 1, figsize=(3.2, 3.8), gridspec_kw={"height_ratios": [6, 1]})
            draw_heatmap(top, display_images[b].cpu().numpy(), heatmaps[b, t],
                         f"{explanation.method}: '{targets[t]}' (p={float(explanation.probabilities[b, t]):.2f})")
            draw_words(bottom, prompt + fed[:t + 1], _context_relevance(explanation, b, t, len(prompt)), targets[t])
            written.append(save_figure(figure, Path(out_dir) / name / f"{t:02d}_{_safe(targets[t])}.png"))
    return written


def _context_relevance(explanation: Explanation, b: int, t: int, prompt: int) -> Optional[np.ndarray]:
    """The relevance of what word t of caption b read before it: a vision-language model's prompt tokens (the
    first ``prompt``), then the fed words; divided by the largest absolute value of the row (zeros stay zero)."""
    if explanation.word_relevance is None:
        return None
    values = explanation.word_relevance[b, t, :t + 1]
    if prompt:
        values = torch.cat([explanation.prompt_relevance[b, t, :prompt], values])
    scale = values.abs().max()
    return (values / scale if scale > 0 else values).detach().cpu().numpy()


def overview_figure(explanations: Sequence[Explanation], display_image: np.ndarray, row: int, path,
                    title: str = "") -> Path:
    """One image, every word (columns) under every method (rows), in one PNG."""
    length = int(explanations[0].lengths[row])
    figure, axes = plt.subplots(len(explanations), length, figsize=(1.9 * length, 2.0 * len(explanations)),
                                squeeze=False)
    for r, explanation in enumerate(explanations):
        heatmaps = explanation.heatmaps()[row].detach().cpu().numpy()
        words = explanation.words[row] if explanation.words else [str(int(i)) for i in explanation.tokens[row]]
        for t in range(length):
            draw_heatmap(axes[r, t], display_image, heatmaps[t], f"{explanation.method}\n{words[t]}" if t == 0
                         else words[t])
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, Path(path), dpi=60)
