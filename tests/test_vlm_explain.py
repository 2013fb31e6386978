"""A vision-language model explained from a user's save_pretrained folder (issue 38): its processor and prompt, the
model's own caption, every method as capxai's Explanation, the command line, and bad input named."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from capxai.cli import main
from capxai.explain import Explanation
from capxai.explain.vlm import VLM_EXPLAINERS, explain_vlm, vlm_methods
from capxai.explain.vlm_image import pixel_image, place_image_tokens
from capxai.explain.vlm_lrp import vlm_relevance
from capxai.models.vlm import is_vlm_folder, load_vlm, sequence_ids

pytest.importorskip("transformers")
from helpers import TINY_VLMS, tiny_processor, tiny_vlm_folder  # noqa: E402


def _picture(seed=0, size=(32, 32)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module", params=list(TINY_VLMS))
def saved_vlm(request, tmp_path_factory):
    """(family, folder) of each tiny family saved with its processor."""
    folder = tmp_path_factory.mktemp(request.param.replace(".", "-"))
    return request.param, tiny_vlm_folder(request.param, folder)


def test_a_folder_is_recognised_and_loaded_with_its_processor_and_prompt(saved_vlm):
    family, folder = saved_vlm
    assert is_vlm_folder(folder)
    vlm = load_vlm(folder)
    assert not any(parameter.requires_grad for parameter in vlm.model.parameters())
    inputs = vlm.prompt_inputs(_picture())
    image_id = vlm.model.config.image_token_id
    placed = int((inputs["input_ids"] == image_id).sum())
    assert placed == {"llava": 16, "paligemma": 16, "qwen2.5-vl": 4, "idefics3-smolvlm": 4, "gemma3": 4,
                      "blip-2": 4, "florence2": 17}[family]


def test_the_caption_is_the_models_own_greedy_generate(saved_vlm):
    _, folder = saved_vlm
    vlm = load_vlm(folder)
    picture = _picture(1)
    forced = vlm.caption(picture, max_new_tokens=4)
    inputs = vlm.prompt_inputs(picture)
    with torch.no_grad():
        generated = vlm.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    # a decoder-only model's generate returns prompt and words; an encoder-decoder's (Florence-2) its decoder's
    assert torch.equal(sequence_ids(forced.inputs)[:, -generated.shape[1]:], generated)
    assert forced.positions.tolist() == list(range(sequence_ids(forced.inputs).shape[1] - forced.positions.numel(),
                                                   sequence_ids(forced.inputs).shape[1]))
    assert forced.caption_ids.tolist() == generated[0, -forced.positions.numel():].tolist()


def test_every_method_gives_finite_maps_of_the_images_size(saved_vlm):
    family, folder = saved_vlm
    vlm = load_vlm(folder)
    pictures = [_picture(2), _picture(3)]
    perturbing = ["integrated-gradients", "occlusion"]  # tens of forwards each: one image
    explained = explain_vlm(vlm, pictures, methods=[m for m in vlm_methods(vlm.spec) if m not in perturbing],
                            max_new_tokens=3)
    explained.update(explain_vlm(vlm, pictures[:1], methods=perturbing, max_new_tokens=3))
    size = (16, 16) if family == "qwen2.5-vl" else (32, 32)
    for method, explanation in explained.items():
        maps = explanation.heatmaps()
        assert maps.shape[0] == (1 if method in perturbing else 2) and maps.shape[-2:] == size, method
        assert torch.isfinite(maps).all() and maps.abs().sum() > 0, method
        assert explanation.words is not None and len(explanation.words[0]) == int(explanation.lengths[0])
        assert (explanation.grid_size is not None) == vlm.spec.image_tokens_on_grid  # BLIP-2's queries: no grid
    if "attention" not in explained:
        return
    attention = explained["attention"].attention
    assert torch.allclose(attention.sum(-1)[explained["attention"].mask].clamp(max=1), attention.sum(-1)[
        explained["attention"].mask])  # a share of each step's attention, at most all of it


def test_lrp_explanation_holds_what_the_backward_gave_every_part_placed(saved_vlm):
    """The Explanation's pixels, image tokens, prompt and words are the slices of vlm_relevance's result, nothing
    lost: the prompt's text tokens + the fed words + the image tokens sum to all the token relevance there is."""
    _, folder = saved_vlm
    vlm = load_vlm(folder, dtype=torch.float64)
    forced = vlm.caption(_picture(4), max_new_tokens=3)
    explanation = explain_vlm(vlm, [_picture(4)], methods=["lrp"], max_new_tokens=3)["lrp"]
    direct = vlm_relevance(vlm.model, forced.inputs, forced.positions)
    one_a_backward = explain_vlm(vlm, [_picture(4)], methods=["lrp"], max_new_tokens=3, memory_budget=1)["lrp"]
    assert (explanation.settings["chunk_size"], one_a_backward.settings["chunk_size"]) == (3, 1)
    torch.testing.assert_close(one_a_backward.pixel_relevance, explanation.pixel_relevance)
    torch.testing.assert_close(explanation.logits[0], direct.logits)
    # on the image's token grid (Florence-2's pooled token spread over it; BLIP-2's queries as they are read)
    placed = (place_image_tokens(direct.image_tokens, vlm.model, forced.inputs).flatten(1)
              if vlm.spec.image_tokens_on_grid else direct.image_tokens)
    torch.testing.assert_close(explanation.feature_relevance[0, :, :, 0], placed)
    torch.testing.assert_close(placed.sum(1), direct.image_tokens.sum(1))
    placed = explanation.prompt_relevance[0].sum(-1) + explanation.word_relevance[0].sum(-1)
    # the relevance of tokens after the word predicted is zero (causal), so the rows hold all of it
    torch.testing.assert_close(placed, direct.tokens.sum(-1))
    torch.testing.assert_close(explanation.pixel_relevance[0].sum((1, 2, 3)), direct.pixels.flatten(1).sum(1))
    assert torch.equal(explanation.word_relevance[0], torch.tril(explanation.word_relevance[0]))


def test_a_contrast_word_is_explained_against(saved_vlm):
    _, folder = saved_vlm
    vlm = load_vlm(folder, dtype=torch.float64)
    picture = _picture(5)
    plain = explain_vlm(vlm, [picture], methods=["lrp"], max_new_tokens=3)["lrp"]
    against = explain_vlm(vlm, [picture], methods=["lrp", "gradient-x-input"], max_new_tokens=3, contrast="red")
    forced = vlm.caption(picture, max_new_tokens=3)
    red = vlm.token_id("red")
    contrast_logit = vlm_relevance(vlm.model, forced.inputs, forced.positions).step_logits[:, red]
    torch.testing.assert_close(against["lrp"].logits[0], plain.logits[0] - contrast_logit)
    assert against["lrp"].contrast_words == [["red"] * int(plain.lengths[0])]
    if "attention" in vlm_methods(vlm.spec):
        with pytest.raises(ValueError, match="attention does not depend"):
            explain_vlm(vlm, [picture], methods=["attention"], max_new_tokens=2, contrast="red")


def test_qwens_flattened_patches_are_put_back_on_the_image():
    """Qwen2.5-VL's processor flattens the image into patches of two frames: pixel_image puts them back (the two
    frames, copies of the image, summed)."""
    processor = tiny_processor("qwen2.5-vl").image_processor
    picture = _picture(6, size=(16, 16))
    flat = processor(images=[picture], do_normalize=False, return_tensors="pt")
    model = TINY_VLMS["qwen2.5-vl"]()[0]
    image = pixel_image(flat["pixel_values"][None], model, dict(flat))
    expected = torch.from_numpy(np.asarray(picture, dtype=np.float32)).permute(2, 0, 1) / 255.0 * 2
    torch.testing.assert_close(image[0], expected, atol=1e-5, rtol=1e-5)


def test_the_explanation_saves_and_loads_with_its_prompt(saved_vlm, tmp_path):
    _, folder = saved_vlm
    vlm = load_vlm(folder)
    explanation = explain_vlm(vlm, [_picture(7)], methods=["lrp"], max_new_tokens=2)["lrp"]
    loaded = Explanation.load(explanation.save(tmp_path / "e.pt"))
    assert loaded.prompt_words == explanation.prompt_words and len(loaded.prompt_words[0]) > 0
    torch.testing.assert_close(loaded.prompt_relevance, explanation.prompt_relevance)


# -- the command line ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    return tiny_vlm_folder("llava", tmp_path_factory.mktemp("llava"))


def test_capxai_explain_hf_model_of_a_vlm_writes_every_method_and_figures(llava_folder, tmp_path, capsys):
    image = tmp_path / "a.png"
    _picture(8).save(image)
    out = tmp_path / "out"
    code = main(["explain", "--hf-model", str(llava_folder), "--images", str(image), "--method", "all",
                 "--max-length", "3", "--prompt", "USER: <image>\nDescribe the image . ASSISTANT:", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for method in VLM_EXPLAINERS:
        explanation = Explanation.load(out / method / "explanation.pt")
        assert explanation.settings["prompt"].startswith("USER: <image>")
        figures = sorted((out / method / "a").glob("*.png"))
        assert len(figures) == int(explanation.lengths[0]), method
    meta = json.loads((out / "lrp" / "explanation.json").read_text())
    assert meta["prompt_words"][0][:2] == ["USER", ":"]
    assert meta["run"]["images"] == [str(image.resolve())]
    # the report of the folder: every method's map of every word, the prompt's relevance before the words'
    assert main(["report", str(out)]) == 0, capsys.readouterr().err
    page = (out / "report.html").read_text()
    data = json.loads(re.search(r'<script id="report-data" type="application/json">(.*?)</script>', page,
                                re.S).group(1))
    example = data["examples"]["explained-0"]
    words = int(explanation.lengths[0])
    assert sorted(example["heatmaps"]) == sorted(VLM_EXPLAINERS)
    assert all(len(maps) == words and all((out / url).is_file() for url in maps) for maps in
               example["heatmaps"].values())
    assert example["prompt"] == meta["prompt_words"][0] and example["fed"][0] == ":"  # "ASSISTANT:"'s last token
    lrp = Explanation.load(out / "lrp" / "explanation.pt")
    prompt, fed = lrp.prompt_relevance[0].numpy(), lrp.word_relevance[0].numpy()
    scale = np.maximum(np.abs(prompt).max(1), np.abs(fed).max(1))[:, None]  # a word's row over both, at most 1
    np.testing.assert_allclose(np.array(example["prompt_relevance"]), prompt / scale, atol=1e-4)
    np.testing.assert_allclose(np.array(example["word_relevance"][-1]), fed[-1] / scale[-1], atol=1e-4)


@pytest.mark.parametrize("change, message", [
    ("no-processor", "holds no processor"),
    ("prompt", "holds no image placeholder '<image>'"),
    ("method", "--method guided-backprop is not offered for a vision-language model"),
    ("family", "capxai explains the vision-language families"),
])
def test_bad_vlm_input_is_one_line_exit_2(llava_folder, tmp_path, capsys, change, message):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(llava_folder, folder)
    image = tmp_path / "a.png"
    _picture(9).save(image)
    arguments = ["explain", "--hf-model", str(folder), "--images", str(image), "--out", str(tmp_path / "out")]
    if change == "no-processor":
        for name in ("processor_config.json", "preprocessor_config.json"):
            (folder / name).unlink(missing_ok=True)
    elif change == "prompt":
        arguments += ["--prompt", "Describe the image ."]
    elif change == "method":
        arguments += ["--method", "guided-backprop"]
    else:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, model_type="llava_next")))
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not (tmp_path / "out" / "lrp" / "explanation.pt").exists()


def test_an_image_the_processor_refuses_is_named(tmp_path):
    folder = tiny_vlm_folder("qwen2.5-vl", tmp_path / "qwen")
    vlm = load_vlm(folder)
    with pytest.raises(ValueError, match="the qwen2_5_vl processor refused the image"):
        vlm.prompt_inputs(_picture(10, size=(600, 2)))  # an aspect ratio over 200, which Qwen's resize refuses


def test_integrated_gradients_and_occlusion_equal_their_definitions():
    """On a tiny LLaVA in float64: Integrated Gradients equals Captum's on one word and is complete (the logit at
    the image minus at the baseline, up to the quadrature); occlusion's value in a square is the logits' drop with
    that square hidden."""
    from captum.attr import IntegratedGradients

    from capxai.explain.vlm_lrp import vlm_integrated_gradients, vlm_occlusion
    from helpers import tiny_vlm

    model, inputs, _ = tiny_vlm("llava", seed=3, offsets=True)
    length = inputs["input_ids"].shape[1]
    positions = torch.arange(length - 2, length)
    integrated, explained, _ = vlm_integrated_gradients(model, inputs, positions)

    def second_word(pixels):
        rows = {**inputs, "input_ids": inputs["input_ids"].expand(pixels.shape[0], -1), "pixel_values": pixels}
        return model(**rows, use_cache=False).logits[:, length - 2, inputs["input_ids"][0, -1]]

    reference = IntegratedGradients(second_word).attribute(inputs["pixel_values"], baselines=0.0, n_steps=16)
    torch.testing.assert_close(integrated[1], reference)
    at_baseline = vlm_integrated_gradients(model, {**inputs, "pixel_values": torch.zeros_like(
        inputs["pixel_values"])}, positions, steps=1)[1]
    torch.testing.assert_close(integrated.flatten(1).sum(1), explained - at_baseline, rtol=2e-2, atol=2e-3)
    occluded, explained, _ = vlm_occlusion(model, inputs, positions, window=16)
    hidden = inputs["pixel_values"].clone()
    hidden[..., 16:, :16] = 0.0  # the bottom-left square of four
    with torch.no_grad():
        logits = model(**{**inputs, "pixel_values": hidden}, use_cache=False).logits[0]
    drop = explained - logits[positions - 1, inputs["input_ids"][0, positions]]
    torch.testing.assert_close(occluded[:, 0, 0, 20, 3], drop)


def test_occlusion_refuses_a_window_under_one():
    from capxai.explain.vlm_lrp import vlm_occlusion
    from helpers import tiny_vlm

    model, inputs, _ = tiny_vlm("llava", seed=3)
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        vlm_occlusion(model, inputs, torch.tensor([inputs["input_ids"].shape[1] - 1]), window=0)


@pytest.mark.parametrize("option, value", [("--prompt", "Describe ."), ("--memory-budget", "64")])
def test_vlm_options_given_to_another_captioner_are_one_line_exit_2(option, value, tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"not read: the option is refused before")
    image = tmp_path / "a.png"
    _picture(2).save(image)
    assert main(["explain", "--checkpoint", str(checkpoint), "--images", str(image), option, value,
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{option} goes with --hf-model of a vision-language model" in error[0], error


def test_tiles_are_placed_crops_side_by_side_and_the_global_view_spread_over_them():
    """A known answer: 2 x 3 crops whose values are their index, then a global view of ones: each block of the
    placed map holds its crop's index plus 1 / 6 (the global view's pixel spread over the 6 it was shrunk from)."""
    crops = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 4, 4)
    pixels = torch.cat([crops, torch.ones(1, 3, 4, 4)])[None, None]  # [K=1, 1, 7, 3, 4, 4]
    placed = pixel_image(pixels, None, {}, tiles=(2, 3))
    assert placed.shape == (1, 3, 8, 12)
    blocks = placed[0, 0].reshape(2, 4, 3, 4).permute(0, 2, 1, 3).reshape(2, 3, 16)
    torch.testing.assert_close(blocks, (torch.arange(6.0).view(2, 3, 1) + 1 / 6).expand(2, 3, 16))
    torch.testing.assert_close(placed.sum(), pixels.sum())  # placing keeps the sum
    tokens = torch.cat([torch.arange(6.0).repeat_interleave(4), torch.ones(4)])[None]  # 2 x 2 tokens a tile
    on_grid = place_image_tokens(tokens, None, {}, tiles=(2, 3))
    assert on_grid.shape == (1, 4, 6) and on_grid[0, 3, 5] == 5 + 1 / 6 and on_grid[0, 0, 2] == 1 + 1 / 6


def test_an_image_split_into_tiles_is_explained_on_the_whole_image(tmp_path):
    """Idefics3 / SmolVLM's image splitting: a 96 x 64 image cut into 2 x 3 tiles and a global view; every method
    maps the whole (resized) image, and placing the tiles loses no relevance."""
    vlm = load_vlm(tiny_vlm_folder("idefics3-smolvlm", tmp_path / "model", split=True), dtype=torch.float64)
    picture = _picture(5, size=(96, 64))
    forced = vlm.caption(picture, max_new_tokens=3)
    assert forced.tiles == (2, 3) and forced.inputs["pixel_values"].shape[1] == 7
    explained = explain_vlm(vlm, [picture], methods=list(VLM_EXPLAINERS), max_new_tokens=3)
    for method, explanation in explained.items():
        maps = explanation.heatmaps()
        assert maps.shape[-2:] == (64, 96) and torch.isfinite(maps).all() and maps.abs().sum() > 0, method
        assert explanation.grid_size == [4, 6], method  # 2 x 2 tokens a tile (4 x 4 patches, pixel shuffle 2)
    lrp, direct = explained["lrp"], vlm_relevance(vlm.model, forced.inputs, forced.positions)
    torch.testing.assert_close(lrp.pixel_relevance[0].sum((1, 2, 3)), direct.pixels.flatten(1).sum(1))
    torch.testing.assert_close(lrp.feature_relevance[0, :, :, 0].sum(1), direct.image_tokens.sum(1))


def test_blip2s_queries_are_explained_but_not_mapped(tmp_path, capsys):
    """BLIP-2's image tokens are its Q-Former's learned queries, each reading the whole image: LRP gives each query's
    relevance (in the order the language model reads them) and the queries' own share as inputs, the pixels their
    map; Grad-CAM and attention, maps of the image tokens, are refused by name, from Python and the command line."""
    folder = tiny_vlm_folder("blip-2", tmp_path / "model")
    vlm = load_vlm(folder, dtype=torch.float64)
    assert vlm_methods(vlm.spec) == ["lrp", "gradient-x-input", "integrated-gradients", "occlusion"]
    explained = explain_vlm(vlm, [_picture(6)], methods=["lrp"], max_new_tokens=3)["lrp"]
    assert explained.grid_size is None and explained.feature_relevance.shape[2] == 4  # four queries
    with pytest.raises(ValueError, match="'gradcam' does not apply to blip-2: its image tokens are not places"):
        explain_vlm(vlm, [_picture(6)], methods=["gradcam"], max_new_tokens=2)
    image = tmp_path / "a.png"
    _picture(6).save(image)
    capsys.readouterr()  # what saving and loading the model wrote
    assert main(["explain", "--hf-model", str(folder), "--images", str(image), "--method", "attention",
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()  # before any weight is read: no loading bar either
    assert len(error) == 1 and "--method attention does not apply to blip-2" in error[0], error
    assert main(["explain", "--hf-model", str(folder), "--images", str(image), "--method", "all", "--max-length", "2",
                 "--out", str(tmp_path / "out")]) == 0
    assert sorted(path.name for path in (tmp_path / "out").iterdir() if path.is_dir()) == sorted(vlm_methods(vlm.spec))


def test_florence2s_pooled_token_is_spread_over_the_grid():
    """Florence-2 puts the image's spatial mean before its 4 x 4 grid of tokens: a map spreads it evenly, keeping the
    sum (a known answer: the pooled token's 16 over 16 places, on a grid of its index)."""
    from types import SimpleNamespace

    florence = SimpleNamespace(config=SimpleNamespace(model_type="florence2"))
    values = torch.cat([torch.tensor([16.0]), torch.arange(16.0)])[None]
    placed = place_image_tokens(values, florence, {})
    torch.testing.assert_close(placed, (torch.arange(16.0) + 1).view(1, 4, 4))


def test_crops_the_prompt_does_not_mark_are_refused_by_name():
    """Gemma 3's pan-and-scan gives several crops of one image whose tokens the prompt does not mark: 4 crops of 4
    tokens would make a square of 16 that is no map of the image, so they are refused, not placed."""
    from capxai.explain.vlm_image import image_token_grid

    with pytest.raises(ValueError, match="hold 4 images or crops where one image was expected"):
        image_token_grid(None, {"pixel_values": torch.zeros(4, 3, 32, 32)}, 16)


def test_the_readmes_vlm_example_runs(tmp_path):
    """The README's example, on a tiny SmolVLM saved as a user's folder and a picture in place of the photo."""
    import contextlib
    import io
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- vlm-example:start -->\n```python\n(.*?)```\n<!-- vlm-example:end -->", readme, re.S)
    assert block, "README: the vlm-example block (between its markers) is missing"
    folder = tiny_vlm_folder("idefics3-smolvlm", tmp_path / "smolvlm")
    _picture(7).save(tmp_path / "photo.png")
    code = block.group(1).replace("path/to/SmolVLM-256M-Instruct", str(folder))
    code = code.replace('"photo.png"', repr(str(tmp_path / "photo.png")))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    caption, shape, prompt = printed.getvalue().strip().splitlines()
    words = len(eval(caption))
    assert words >= 1 and eval(shape) == (1, words, 32, 32)
    prompt_words, prompt_shape = prompt.rsplit(" (", 1)
    assert eval(prompt_words) == ["User", ":", "<fake_token_around_image>"]
    assert eval("(" + prompt_shape)[:2] == (1, words)


def test_every_family_is_explained_by_every_method_from_the_command_line(saved_vlm, tmp_path, capsys):
    """``capxai explain --hf-model DIR --method all`` for each family with its default prompt: every method that
    applies to it written, with finite maps (figures: the LLaVA test above)."""
    family, folder = saved_vlm
    image = tmp_path / "a.png"
    _picture(9).save(image)
    out = tmp_path / "out"
    assert main(["explain", "--hf-model", str(folder), "--images", str(image), "--method", "all", "--max-length", "2",
                 "--no-figures", "--out", str(out)]) == 0, capsys.readouterr().err
    spec = load_vlm(folder).spec
    for method in vlm_methods(spec):
        maps = Explanation.load(out / method / "explanation.pt").heatmaps()
        assert torch.isfinite(maps).all() and maps.abs().sum() > 0, (family, method)
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == sorted(vlm_methods(spec))


def test_the_report_of_explained_images_names_what_is_missing(llava_folder, tmp_path, capsys):
    """An explained image that is gone, or explanations that do not name their images (an older capxai): one line,
    exit 2, no page written."""
    image = tmp_path / "a.png"
    _picture(3).save(image)
    out = tmp_path / "out"
    assert main(["explain", "--hf-model", str(llava_folder), "--images", str(image), "--method", "lrp",
                 "--max-length", "2", "--no-figures", "--out", str(out)]) == 0
    image.unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is gone; the page shows the maps over it" in error[0], error
    meta = json.loads((out / "lrp" / "explanation.json").read_text())
    meta["run"].pop("images")
    (out / "lrp" / "explanation.json").write_text(json.dumps(meta))
    assert main(["report", str(out)]) == 2
    assert "do not name their 1 image files" in capsys.readouterr().err
    assert not (out / "report.html").exists() and not (out / "report_files").exists()
