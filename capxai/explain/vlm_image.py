"""Where a vision-language model's image tokens and pixel values lie on the image (issue 38): the language model reads
the image as a sequence of tokens, the processor gives it as pixel values of the family's own shape; a map of either
is put back on the image here, so that every method's map is one picture of the image.

- One image as one grid of tokens: LLaVA, PaliGemma, Gemma 3 (a square grid), Idefics3 / SmolVLM without image
  splitting (pixel shuffle included: its tokens are still a square grid), Qwen2.5-VL (``image_grid_thw`` over the
  merge size; its flattened patches put back in place).
- Pooled tokens before the grid (Florence-2's spatial mean, :attr:`capxai.models.vlm.VLMFamily.pooled_image_tokens`):
  each spread evenly over the grid.
- Tiles (``tiles=(rows, columns)``): Idefics3 / SmolVLM's image splitting cuts the image, resized to a multiple of
  the tile side, into ``rows x columns`` crops (row by row), then adds the whole image resized to one tile (the
  global view), each read as its own grid of tokens. The crops are placed side by side; the global view covers the
  whole image, each of its tokens (and pixels) spread evenly over the ``rows x columns`` block it was shrunk from,
  so that a map keeps its sum. Placed maps of the crops and of the global view add.
"""
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from capxai.models.vlm import VLM_FAMILIES

Tiles = Optional[Tuple[int, int]]  # (rows, columns) of an image's crops, followed by one global view; None: one image


def image_token_grid(model: nn.Module, inputs: Dict[str, torch.Tensor], count: int, tiles: Tiles = None):
    """``(rows, columns)`` of the map of the ``count`` image tokens of one image (row by row): Qwen2-VL / Qwen2.5-VL
    from ``image_grid_thw`` over the merge size (one frame); the families whose image becomes a square of tokens from
    the square root (after the family's pooled tokens); with ``tiles``, each of the ``rows x columns + 1`` tiles a
    square of tokens, the crops side by side. Several images or frames are refused by name."""
    count -= pooled_tokens(model)
    grid = inputs.get("image_grid_thw")
    if grid is not None:
        if grid.shape[0] != 1 or int(grid[0, 0]) != 1:
            raise ValueError(f"image_token_grid: one image of one frame is placed, got image_grid_thw "
                             f"{grid.tolist()}")
        merge = getattr(getattr(model.config, "vision_config", None), "spatial_merge_size", 1)
        rows, columns = int(grid[0, 1]) // merge, int(grid[0, 2]) // merge
        expected = rows * columns
    else:
        pieces = 1 if tiles is None else tiles[0] * tiles[1] + 1
        pixels = inputs.get("pixel_values")
        given = None if pixels is None else pixels.numel() // max(1, pixels.shape[-3:].numel())
        if given is not None and given != pieces:  # e.g. Gemma 3's pan-and-scan crops: not marked in the prompt
            raise ValueError(f"image_token_grid: the pixel values hold {given} images or crops where "
                             f"{'one image' if tiles is None else f'{tiles[0]} x {tiles[1]} tiles and a global view'}"
                             " was expected; several images, or crops the processor did not mark (Gemma 3's "
                             "pan-and-scan, LLaVA-NeXT's any-resolution), are not placed")
        side = int(round((count / pieces) ** 0.5))
        rows, columns = (side, side) if tiles is None else (tiles[0] * side, tiles[1] * side)
        expected = pieces * side * side
    if expected != count:
        raise ValueError(f"image_token_grid: {count} image tokens do not form the grid of one image "
                         f"({rows} x {columns}{'' if tiles is None else f' from {tiles[0]} x {tiles[1]} tiles'}); "
                         "several images, or tiles the processor did not mark (e.g. LLaVA-NeXT's any-resolution), "
                         "are not placed")
    return rows, columns


def _place_tiles(values: torch.Tensor, tiles: Tuple[int, int]) -> torch.Tensor:
    """``[K, rows x columns + 1, *C, s, s]`` (crops row by row, then the global view) -> ``[K, *C, rows x s,
    columns x s]``: the crops side by side, the global view spread evenly over the blocks it was shrunk from."""
    rows, columns = tiles
    words, side = values.shape[0], values.shape[-1]
    crops, overview = values[:, :-1], values[:, -1]
    crops = crops.reshape(words, rows, columns, *crops.shape[2:])  # [K, r, c, *C, s, s]
    channels = crops.dim() - 5
    order = (0, *range(3, 3 + channels), 1, 3 + channels, 2, 4 + channels)  # [K, *C, r, s, c, s]
    placed = crops.permute(order).reshape(words, *crops.shape[3:3 + channels], rows * side, columns * side)
    spread = overview.repeat_interleave(rows, -2).repeat_interleave(columns, -1) / (rows * columns)
    return placed + spread


def pooled_tokens(model: Optional[nn.Module]) -> int:
    """How many of ``model``'s image tokens come before the grid and pool the whole image (its family's
    ``pooled_image_tokens``; 0 for a model of no covered family)."""
    family = VLM_FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None))
    return family.pooled_image_tokens if family is not None else 0


def place_image_tokens(values: torch.Tensor, model: nn.Module, inputs: Dict[str, torch.Tensor],
                       tiles: Tiles = None) -> torch.Tensor:
    """``[K, N]`` values of the image tokens (in the order the language model reads them) -> ``[K, rows, columns]``
    on the image's token grid (:func:`image_token_grid`; tiles placed as the module docstring says)."""
    rows, columns = image_token_grid(model, inputs, values.shape[1], tiles)
    pooled = pooled_tokens(model)
    if pooled:  # each pooled token read the whole image: spread over the grid, keeping the sum
        spread = values[:, :pooled].sum(1)[:, None, None] / (rows * columns)
        return spread + place_image_tokens(values[:, pooled:], None, inputs, tiles)
    if tiles is None:
        return values.reshape(-1, rows, columns)
    side = rows // tiles[0]
    return _place_tiles(values.reshape(values.shape[0], -1, side, side), tiles)


def pixel_image(pixels: torch.Tensor, model: nn.Module, inputs: Dict[str, torch.Tensor],
                tiles: Tiles = None) -> torch.Tensor:
    """``[K, *pixel_values.shape]`` -> ``[K, 3, H, W]``: relevance on the processor's pixel values placed on the
    image. One image [1, 3, H, W] (LLaVA, PaliGemma, Gemma 3) or one tile [1, 1, 3, H, W] (Idefics3 / SmolVLM) as it
    is; ``tiles`` crops and their global view [1, rows x columns + 1, 3, s, s] placed (module docstring);
    Qwen2.5-VL's flattened patches ``[patches, C * frames * p * p]`` put back in place (the inverse of its image
    processor's flattening; the frames, one image repeated, summed)."""
    grid = inputs.get("image_grid_thw")
    if grid is not None:
        vision = model.config.vision_config
        patch, frames, merge = vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size
        t, h, w = (int(v) for v in grid[0])
        words = pixels.shape[0]
        blocks = pixels.reshape(words, t, h // merge, w // merge, merge, merge, -1, frames, patch, patch)
        image = blocks.permute(0, 1, 7, 6, 2, 4, 8, 3, 5, 9).reshape(words, t * frames, -1, h * patch, w * patch)
        return image.sum(1)
    if tiles is not None and pixels.dim() == 6 and pixels.shape[1] == 1 \
            and pixels.shape[2] == tiles[0] * tiles[1] + 1:
        return _place_tiles(pixels[:, 0], tiles)
    if tiles is None and pixels.dim() == 6 and pixels.shape[1:3] == (1, 1):
        return pixels[:, 0, 0]
    if tiles is None and pixels.dim() == 5 and pixels.shape[1] == 1:
        return pixels[:, 0]
    raise ValueError(f"pixel_image: pixel values of shape {list(pixels.shape[1:])} are not one image"
                     f"{'' if tiles is None else f' in {tiles[0]} x {tiles[1]} tiles and a global view'} (several "
                     "images are not placed)")


def image_size(model: nn.Module, inputs: Dict[str, torch.Tensor], tiles: Tiles = None) -> Tuple[int, int]:
    """``(H, W)`` of the image the maps are placed on (:func:`pixel_image`'s)."""
    grid = inputs.get("image_grid_thw")
    if grid is not None:
        patch = model.config.vision_config.patch_size
        return int(grid[0, 1]) * patch, int(grid[0, 2]) * patch
    height, width = inputs["pixel_values"].shape[-2:]
    return (height, width) if tiles is None else (tiles[0] * height, tiles[1] * width)


def occlusion_features(model: nn.Module, inputs: Dict[str, torch.Tensor], window: int) -> torch.Tensor:
    """Which occluded square each pixel value belongs to (``[1, *pixel_values.shape]``, ids from 0): squares of
    ``window`` pixels over an image ``[1, 3, H, W]`` or each of the tiles ``[1, T, 3, H, W]`` (numbered tile after
    tile); for Qwen2.5-VL's flattened patches ``[patches, C * frames * p * p]``, each image token's patches (its
    merged ``merge x merge`` block of rows) together."""
    pixels = inputs["pixel_values"]
    if inputs.get("image_grid_thw") is not None:
        merge = model.config.vision_config.spatial_merge_size
        token = torch.arange(pixels.shape[0], device=pixels.device) // (merge * merge)
        return token.view(1, -1, 1).expand(1, *pixels.shape)
    height, width = pixels.shape[-2:]
    pieces = pixels.numel() // (3 * height * width)
    if pixels.numel() != pieces * 3 * height * width or (pieces > 1 and (pixels.dim() != 5 or pixels.shape[0] != 1)):
        raise ValueError(f"occlusion: pixel values of shape {list(pixels.shape)} are not one image or its tiles")
    rows = torch.arange(height, device=pixels.device) // window
    columns = torch.arange(width, device=pixels.device) // window
    per_row = (width + window - 1) // window
    square = rows[:, None] * per_row + columns[None, :]  # [H, W]
    squares = int(square.max()) + 1
    tile = torch.arange(pieces, device=pixels.device).view(pieces, 1, 1, 1) * squares
    return (tile + square.expand(pieces, 3, height, width)).reshape(1, *pixels.shape)
