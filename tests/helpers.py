"""The one home of the test helpers: no test file imports from another (issue 37); what several share lives here.

- comparison: :func:`assert_matches` and its tolerances (:data:`RTOL`);
- tiny configurations: :data:`TINY` (the CLI-level tests) and :data:`TINY_TRAINING` (the training tests), built on
  first use; :func:`torch_threads` (the tiny demo's one thread);
- input builders for the ops: :func:`make_linear_inputs`, :func:`make_lstm_inputs`, :func:`make_additive_inputs`,
  :func:`make_sdpa_inputs`, :func:`make_mask`;
- tiny captioners for the explainers: :func:`make_captioner`, :func:`make_encoder`, :func:`make_captions`,
  :func:`features_of`;
- training under DistributedDataParallel: :func:`training_batch`, :func:`training_model`, :func:`free_port`;
- a report with hostile text in every string it shows: :func:`hostile_report`, :data:`HOSTILE`, :data:`SHOWN`.

It imports only torch at module level (capxai's modules inside the helpers that use them): the op tests, the CUDA
ones among them, import it without pulling in the training, explanation and report stacks (tests/test_gpu_check.py
collects the CUDA test files without what a GPU machine lacks).
"""
import contextlib
import functools
import json
import math
import socket

import torch

# -- comparison -------------------------------------------------------------------------------------------------------
# docs/LRP_RULES.md, property 2: fused kernel == reference.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def assert_matches(actual, expected, rtol=None):
    """Elementwise ``|a - e| <= rtol * (|e| + max|e|)``: relative to each value and to the tensor's scale.

    Relevance sums terms of both signs; where they cancel, a value is small next to its terms and only the scale of
    the tensor says what rounding it may carry.
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype and actual.device == expected.device
    rtol = RTOL[expected.dtype] if rtol is None else rtol
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale + 1e-30)


# -- tiny configurations ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _tiny_configs():
    from capxai.train import TrainConfig

    return {
        # The smallest training configuration the CLI-level tests share (a captioner that trains in seconds on tiny
        # scenes; what it learns does not matter to them).
        "TINY": TrainConfig(hidden=8, attention_dim=8, heads=2, dropout=0.0, epochs=1, batch_size=4, min_count=1,
                            max_length=8, image_size=32),
        # The training tests' configuration (tests/test_training.py): its loss falls within two epochs.
        "TINY_TRAINING": TrainConfig(hidden=16, attention_dim=16, heads=2, dropout=0.0, epochs=2, batch_size=8,
                                     min_count=1, max_length=12, lr=3e-3),
    }


def __getattr__(name):
    """:data:`TINY` and :data:`TINY_TRAINING`, built on first use, so that importing this module does not import
    capxai.train."""
    if name in ("TINY", "TINY_TRAINING"):
        return _tiny_configs()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op threads set to ``count`` inside the block, and back afterwards.

    The tiny demo runs with one (as each of ``make demo``'s workers does on 2 cores): its models are too small to gain
    from a second thread, and a second one spins while the other core is busy. In this process on the 2-core VM, one
    thread took 38 s, two 127 s (docs/experiments/test-tiers/README.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- input builders for the ops ---------------------------------------------------------------------------------------
def make_linear_inputs(n_rows, n_in, n_out, n_targets, dtype, device, with_bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def random(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

    relevance_shape = (n_rows, n_out) if n_targets is None else (n_targets, n_rows, n_out)
    return dict(x=random(n_rows, n_in), weight=random(n_out, n_in), bias=random(n_out) if with_bias else None,
                relevance=random(*relevance_shape))


def make_lstm_inputs(steps, batch, n_in, hidden, n_targets, dtype, device, with_bias=True, with_cell=True, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def random(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).to(device)

    relevance_shape = (steps, batch, hidden) if n_targets is None else (n_targets, steps, batch, hidden)
    return dict(x=random(steps, batch, n_in), h0=random(batch, hidden), c0=random(batch, hidden),
                weight_ih=random(4 * hidden, n_in, scale=0.5), weight_hh=random(4 * hidden, hidden, scale=0.5),
                bias_ih=random(4 * hidden) if with_bias else None, bias_hh=random(4 * hidden) if with_bias else None,
                relevance_h=random(*relevance_shape), relevance_c=random(*relevance_shape) if with_cell else None)


def _random(generator, dtype, device):
    return lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype).to(device)


def make_additive_inputs(batch, n_values, dim, n_targets, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    random = _random(generator, dtype, device)
    relevance_shape = (batch, dim) if n_targets is None else (n_targets, batch, dim)
    return dict(values=random(batch, n_values, dim), weights=torch.softmax(random(batch, n_values), -1),
                relevance=random(*relevance_shape))


def make_sdpa_inputs(batch, heads, n_queries, n_keys, dim, dim_v, n_targets, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    random = _random(generator, dtype, device)
    relevance_shape = (batch, heads, n_queries, dim_v)
    relevance_shape = relevance_shape if n_targets is None else (n_targets, *relevance_shape)
    return dict(q=random(batch, heads, n_queries, dim), k=random(batch, heads, n_keys, dim),
                v=random(batch, heads, n_keys, dim_v), relevance=random(*relevance_shape))


def make_mask(kind, batch, heads, n_queries, n_keys, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "causal":
        return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=n_keys - n_queries)
    allowed = torch.rand(batch, 1, n_queries, n_keys, generator=generator) > 0.3
    allowed[..., 0] = True
    if kind == "bool":
        return allowed.to(device)
    bias = torch.randn(batch, 1, n_queries, n_keys, generator=generator, dtype=dtype) * 0.5
    return torch.where(allowed, bias, torch.tensor(-math.inf, dtype=dtype)).to(device)  # "float"


# -- tiny captioners for the explainers -------------------------------------------------------------------------------
VOCAB, CHANNELS = 30, 24


def make_captioner(kind, dtype=torch.float64, seed=0):
    from capxai.models import AdaptiveAttentionCaptioner, MultiHeadCaptioner

    torch.manual_seed(seed)
    if kind == "adaptive":
        model = AdaptiveAttentionCaptioner(VOCAB, CHANNELS, hidden=16, attention_dim=8, dropout=0.5)
    else:
        model = MultiHeadCaptioner(VOCAB, CHANNELS, hidden=16, heads=4, dropout=0.5)
    with torch.no_grad():  # every bias and weight away from its initial pattern (b_ih != b_hh, all non-zero)
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.to(dtype).eval()


def make_encoder(dtype=torch.float64, seed=1):
    from capxai.models import SceneCNN

    torch.manual_seed(seed)
    encoder = SceneCNN(channels=CHANNELS)
    with torch.no_grad():  # BatchNorm with non-trivial statistics, so that merging it matters
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return encoder.to(dtype).eval()


def make_captions(batch=3, length=7, seed=2):
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, VOCAB, (batch, length), generator=generator)
    captions[:, 0] = 1
    captions[:, -1] = 2
    if batch > 1:  # a shorter caption: padding after its <end>
        captions[0, 4], captions[0, 5:] = 2, 0
    return captions


def features_of(batch=3, regions=9, seed=3, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, regions, CHANNELS, generator=generator, dtype=dtype)


# -- training under DistributedDataParallel ---------------------------------------------------------------------------
def training_batch(seed, size):
    """A batch of ``size`` random 32x32 images with two random captions each (a 20-word vocabulary)."""
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(3, 20, (size, 2, 6), generator=generator)
    captions[..., 0] = 1
    return {"images": torch.randn(size, 3, 32, 32, generator=generator), "captions": captions,
            "caption_mask": torch.ones(size, 2, dtype=torch.bool)}


def training_model():
    """The same captioner in every process: :data:`TINY_TRAINING` at 32x32, seed 0, its encoder in eval mode."""
    from capxai.train import TrainConfig, build_model

    torch.manual_seed(0)
    config = TrainConfig(**{**_tiny_configs()["TINY_TRAINING"].__dict__, "image_size": 32})
    model = build_model(config, vocab_size=20)
    model.encoder.eval()  # BatchNorm with running statistics: identical in every process
    return model


def free_port():
    """A free TCP port on 127.0.0.1 (the rendezvous of a gloo process group)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- crafted data sets: whatever text the data holds is shown as text on the page, never run -------------------------
HOSTILE = {
    "word": '<img src=x onerror="window.__pwned=1">',  # a generated word (the vocabulary is the captions' words)
    "breakout": "</script><script>window.__pwned=2</script>",  # would end the page's json script element
    "comment": "<!--<script>",  # would make the browser's parser swallow the page's own </script>
    "category": '<b onmouseover="window.__pwned=3">ball</b>',  # a category name (probes, CHAIR, tables)
    "image_id": "<script>window.__pwned=4</script>",
    "captioner": "<svg onload=window.__pwned=5>#?%",  # a folder name: no "/", no "-"; "#?%" must not break URLs
    "file": "<img src=x onerror=window.__pwned=6>.png",  # an image's file name (not shown; must not leak either)
}
SHOWN = ("word", "breakout", "comment", "category", "image_id", "captioner")


def _copy_report_inputs(source, target) -> None:
    """Only what the report reads (a full run is large); the explanations' tensors are linked, not copied."""
    import shutil

    target.mkdir(parents=True)
    for folder in source.glob("eval-*"):
        shutil.copytree(folder, target / folder.name)
    for tensors in source.glob("explain-*/*/explanation.pt"):
        copy = target / tensors.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.symlink_to(tensors.resolve())
        shutil.copy(tensors.with_suffix(".json"), copy.with_suffix(".json"))
    for chosen in source.glob("report-images-*.json"):
        shutil.copy(chosen, target / chosen.name)
        for item in json.loads(chosen.read_text()):
            (target / "scenes" / item["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / "scenes" / item["file"], target / "scenes" / item["file"])
    for name in ("finetune/finetune_table.md", "demo.json"):
        if (source / name).is_file():
            (target / name).parent.mkdir(exist_ok=True)
            shutil.copy(source / name, target / name)


def _rename_captioner(run, old: str, new: str) -> None:
    """The captioner ``old`` as ``new``: its evaluations, explanations and report list."""
    for path in [*run.glob(f"eval-{old}"), *run.glob(f"eval-{old}-*"), run / f"explain-{old}",
                 run / f"report-images-{old}.json"]:
        path.rename(path.with_name(path.name.replace(old, new, 1)))


def _edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _poison_words(run) -> None:
    """The first caption of every explanation starts with hostile words; its report image has a hostile file name,
    image id and category names."""
    import shutil

    def change(meta):
        meta["words"][0][:3] = [HOSTILE["word"], HOSTILE["breakout"], HOSTILE["comment"]]
    for meta in run.glob("explain-*/*/explanation.json"):
        _edit_json(meta, change)

    def choose(items):
        image = run / "scenes" / items[0]["file"]
        shutil.copy(image, image.with_name(HOSTILE["file"]))  # copied: the captioners may show the same image
        items[0].update(file=str(image.with_name(HOSTILE["file"]).relative_to(run / "scenes")),
                        image_id=HOSTILE["image_id"], hallucinated=[HOSTILE["word"]],
                        probe={"present": HOSTILE["category"], "absent": HOSTILE["category"]})
    for chosen in run.glob("report-images-*.json"):
        _edit_json(chosen, choose)


def _poison_captions(run) -> None:
    """A hostile image id and caption first in every CHAIR result (the before/after fine-tuning table)."""
    def change(chair):
        entry = {"words": [HOSTILE["word"], HOSTILE["breakout"], HOSTILE["category"]], "hallucination_idxs": [2]}
        chair["chair"]["imgToEval"] = {HOSTILE["image_id"]: entry, **chair["chair"]["imgToEval"]}
    for path in run.glob("eval-*/hallucination_*.json"):
        _edit_json(path, change)


def _poison_tables(run) -> None:
    """Hostile cells in the markdown tables and stage times."""
    row = f"\n| {HOSTILE['category']} | {HOSTILE['breakout']} |\n|---|---|\n| {HOSTILE['word']} | 1 |\n"
    for path in [*run.glob("eval-*/explanations_*.md"), run / "finetune" / "finetune_table.md"]:
        path.parent.mkdir(exist_ok=True)
        path.write_text((path.read_text() if path.is_file() else "# table\n") + row)
    times = {"stages": {HOSTILE["category"]: {"seconds": 1.0}}, "total_seconds_this_run": 1.0,
             "machine": HOSTILE["comment"] + HOSTILE["image_id"]}
    (run / "demo.json").write_text(json.dumps(times))


def hostile_report(source, target):
    """The report of run ``source``'s inputs, copied to ``target`` with hostile text (:data:`HOSTILE`) in every
    string that reaches the page: words, image ids, file names, category names, a captioner's name, tables."""
    from capxai.report.html_report import build_report, captioners_of

    _copy_report_inputs(source, target)
    _rename_captioner(target, captioners_of(target)[0], HOSTILE["captioner"])
    _poison_words(target)
    _poison_captions(target)
    _poison_tables(target)
    return build_report(target, progress=False)


# -- tiny vision-language models of Hugging Face families (issue 38), random weights, float64 ---------------------
def frozen(module):
    """``module`` in float64, eval mode, its parameters frozen (constants to the relevance rules)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.double().eval()


def _llama_config(**values):
    from transformers import LlamaConfig

    return LlamaConfig(**values)


TEXT = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64)
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
              patch_size=8)


def _llava():
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(vision_config=CLIPVisionConfig(**VISION, projection_dim=16), text_config=_llama_config(**TEXT),
                         image_token_index=63, vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=16)
    ids = torch.tensor([[1] + [63] * 16 + [5, 7, 9]])  # 4 x 4 patches of 8 px, the class token dropped
    return LlavaForConditionalGeneration(config), dict(input_ids=ids, pixel_values=torch.rand(1, 3, 32, 32)), 63


def _qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=8, fullatt_block_indexes=[1])
    text = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}, bos_token_id=1, eos_token_id=2)
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=60, video_token_id=61,
                              vision_start_token_id=62, vision_end_token_id=63)
    # a 16 px image: 4 x 4 patches of 4 px over 2 frames (Conv3d), merged 2 x 2 into 4 tokens; multimodal RoPE
    inputs = dict(input_ids=torch.tensor([[1, 62] + [60] * 4 + [63, 5, 7]]), pixel_values=torch.rand(16, 96),
                  image_grid_thw=torch.tensor([[1, 4, 4]]))
    return Qwen2_5_VLForConditionalGeneration(config), inputs, 60


def _idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    config = Idefics3Config(vision_config=VISION, text_config=dict(TEXT, model_type="llama"), scale_factor=2,
                            image_token_id=63)
    # SmolVLM's shape: SigLIP patches, pixel shuffle 2 x 2 (16 patches -> 4 tokens), a LLaMA
    inputs = dict(input_ids=torch.tensor([[1] + [63] * 4 + [5, 7]]), pixel_values=torch.rand(1, 1, 3, 32, 32))
    return Idefics3ForConditionalGeneration(config), inputs, 63


def _paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    config = PaliGemmaConfig(vision_config=dict(VISION, vision_use_head=False, projection_dim=16),
                             text_config=dict(TEXT, head_dim=8), image_token_index=63, projection_dim=16)
    # a prefix LM: the image and the prompt (type 0) attend both ways, the caption (type 1, the last three tokens)
    # causally; without token_type_ids every token would see the caption's later words
    inputs = dict(input_ids=torch.tensor([[63] * 16 + [2, 5, 7]]), pixel_values=torch.rand(1, 3, 32, 32),
                  token_type_ids=torch.tensor([[0] * 16 + [1, 1, 1]]))
    return PaliGemmaForConditionalGeneration(config), inputs, 63


def _gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(text_config=dict(TEXT, head_dim=8, sliding_window=8,
                                           layer_types=["sliding_attention", "full_attention"]),
                          vision_config=dict(VISION, vision_use_head=False), mm_tokens_per_image=4,
                          image_token_index=63, boi_token_index=61, eoi_token_index=62)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers initialises the projection to zeros: no image would reach the words
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.3)
    # SigLIP's 4 x 4 patches average-pooled 2 x 2 into 4 tokens between <start_of_image> and <end_of_image>; the
    # image tokens attend both ways (token type 1), the rest causally; the first layer within a sliding window of 8
    ids = torch.tensor([[2, 61] + [63] * 4 + [62, 5, 7, 9]])
    return model, dict(input_ids=ids, pixel_values=torch.rand(1, 3, 32, 32), token_type_ids=(ids == 63).long()), 63


def _blip2():
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    # BLIP-2: a ViT (32 px in patches of 8: 16 patches and the class token), a Q-Former of 4 learned queries
    # cross-attending the patches at every layer, a linear projection, OPT. BLIP-2's vision initializer_range is 1e-10
    # (weights that small make eps matter); OPT's embeddings untied (tied, a random model repeats its input token)
    config = Blip2Config(
        vision_config=dict(VISION, hidden_size=32, intermediate_size=64, initializer_range=0.02),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            cross_attention_frequency=1, max_position_embeddings=64, vocab_size=64),
        text_config=dict(model_type="opt", vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=32, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
        num_query_tokens=4, image_token_index=63)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():  # transformers initialises the queries to zeros: all four would read the image alike
        model.query_tokens.normal_(0.0, 1.0)
    # Blip2Processor's layout: the 4 query outputs at the placeholders, then <s> and the text
    ids = torch.tensor([[63] * 4 + [1, 5, 7, 9]])
    return model, dict(input_ids=ids, pixel_values=torch.rand(1, 3, 32, 32)), 63


def _florence2():
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    # Florence-2: a DaViT of two stages (convolutions 7/4 then 3/2: 32 px -> 8 x 8 -> 4 x 4; a window-attention
    # block (window 2) and a channel-attention block each), a projector with learned 2D and cosine 1D positions that
    # puts the spatial mean first: 1 + 16 image tokens; BART with one encoder and one decoder layer. An
    # encoder-decoder: the image and the prompt go into the encoder, the caption is the decoder's input (</s> as the
    # start token); embeddings untied (tied, a random model repeats its input token)
    vision = dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                  patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 2], num_groups=[2, 2], window_size=2,
                  drop_path_rate=0.0, projection_dim=32, max_position_embeddings=8, max_temporal_embeddings=4)
    text = dict(model_type="bart", vocab_size=64, d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=64, bos_token_id=1, pad_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                forced_bos_token_id=None, forced_eos_token_id=None, tie_word_embeddings=False)
    config = Florence2Config(vision_config=vision, text_config=text, image_token_id=63, tie_word_embeddings=False)
    inputs = dict(input_ids=torch.tensor([[63] * 17 + [1, 5, 7, 2]]), pixel_values=torch.rand(1, 3, 32, 32),
                  decoder_input_ids=torch.tensor([[2, 9, 11, 13]]))
    return Florence2ForConditionalGeneration(config), inputs, 63


TINY_VLMS = {"llava": _llava, "qwen2.5-vl": _qwen2_5_vl, "idefics3-smolvlm": _idefics3, "paligemma": _paligemma,
             "gemma3": _gemma3, "blip-2": _blip2, "florence2": _florence2}


def tiny_vlm(family: str, seed: int = 0, offsets: bool = False):
    """``(model, inputs, image token id)`` of a tiny VLM of ``family`` (``TINY_VLMS``): frozen, float64, inputs in
    float64; biases, position and class embeddings zeroed (so that the rules conserve exactly) unless ``offsets``."""
    torch.manual_seed(seed)
    model, inputs, image_token = TINY_VLMS[family]()
    model = frozen(model)
    inputs = {name: value.double() if value.is_floating_point() else value for name, value in inputs.items()}
    if offsets:
        return model, inputs, image_token
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or any(offset in name for offset in (
                    "position_embedding", "class_embedding", "embed_positions", "image_position_embed")):
                parameter.zero_()  # (OPT's and BART's learned positions; Florence-2's 2D positions)
        for name, buffer in model.named_buffers():
            if name.endswith("pos_idx_to_embed"):  # Florence-2's cosine positions of frames: a table, not a parameter
                buffer.zero_()
    return model, inputs, image_token


@contextlib.contextmanager
def token_leaves(model):
    """Inside the block, each token embedding the model computes becomes a leaf that requires grad, listed in the
    order computed: the prompt's and caption's, or an encoder-decoder's encoder's then decoder's (Florence-2's
    decoder embeds with a module of its own)."""
    leaves, embedders = [], {model.get_input_embeddings()}
    if model.config.is_encoder_decoder:
        decoder = model.get_decoder()
        embedders.add(getattr(decoder, "get_decoder", lambda: decoder)().embed_tokens)

    def as_leaf(module, arguments, output):
        leaves.append(output.detach().requires_grad_())
        return leaves[-1]

    hooks = [embedder.register_forward_hook(as_leaf) for embedder in embedders]
    try:
        yield leaves
    finally:
        for hook in hooks:
            hook.remove()


class ImplicitRules(torch.overrides.TorchFunctionMode):
    """AttnLRP's rules in LXT's implicit ("efficient") form, written independently of capxai's mode: softmax weights
    detached (constant attention), LayerNorm's standard deviation and RMSNorm's ``rsqrt`` detached, a sigmoid
    detached (a gate, CLIP's quick GELU), GELU and SiLU as ``x * (f(x) / x).detach()``, the product of two signals
    halved (``(a * b.detach() + a.detach() * b) / 2``), attention written out with its weights detached. Gradient x
    Input through a model run in this mode is then LRP layer by layer with the offsets as they are (epsilon -> 0)."""

    SOFTMAX = (torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax)
    DETACHED = (torch.rsqrt, torch.Tensor.rsqrt, torch.sigmoid, torch.Tensor.sigmoid, torch.nn.functional.sigmoid)
    RATIO = (torch.nn.functional.gelu, torch.nn.functional.silu)
    PRODUCT = (torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SOFTMAX or func in self.DETACHED:
            return func(*args, **kwargs).detach()
        if func in self.RATIO:
            x = args[0]
            return x * (func(*args, **kwargs) / x).detach()
        if func in self.PRODUCT and all(isinstance(a, torch.Tensor) and a.requires_grad for a in args[:2]):
            a, b = args[:2]
            return (a * b.detach() + a.detach() * b) / 2
        if func is torch.nn.functional.layer_norm:
            x, shape = args[0], tuple(args[1])
            weight, bias = (args[i] if len(args) > i else kwargs.get(name) for i, name in ((2, "weight"), (3, "bias")))
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            dims = tuple(range(-len(shape), 0))
            centred = x - x.mean(dims, keepdim=True)
            normalised = centred / (centred.pow(2).mean(dims, keepdim=True) + eps).sqrt().detach()
            # contiguous, as F.layer_norm's output (a pixel shuffle after it views it)
            return (normalised * (1 if weight is None else weight) + (0 if bias is None else bias)).contiguous()
        if func is torch.nn.functional.scaled_dot_product_attention:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
            values = dict(zip(names, args), **kwargs)
            query, key, value, mask = values["query"], values["key"], values["value"], values.get("attn_mask")
            if key.shape[-3] != query.shape[-3]:
                key, value = (t.repeat_interleave(query.shape[-3] // t.shape[-3], dim=-3) for t in (key, value))
            scores = query @ key.transpose(-2, -1) * (values.get("scale") or query.shape[-1] ** -0.5)
            if values.get("is_causal"):
                mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            return scores.softmax(-1).detach() @ value
        return func(*args, **kwargs)


# -- the same tiny families saved as a user's save_pretrained folder, with a processor of each family -------------
VLM_WORDS = ("USER ASSISTANT Assistant User user assistant : . Describe the image in one sentence caption en a an red "
             "blue green circle square triangle star and with on of is there two three photo What does describe ?"
             ).split()
CHAT_TEMPLATES = {
    "qwen2.5-vl": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == "
                  "'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
                  "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                  "{% endif %}",
    "gemma3": "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == "
              "'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_turn>\n"
              "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    "idefics3-smolvlm": "{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}{% if "
                        "c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
                        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}",
}
FAMILY_TOKENS = {  # token -> id, as the tiny models' configs place them
    "llava": {"<image>": 63}, "paligemma": {"<image>": 63}, "idefics3-smolvlm": {"<image>": 63},
    "blip-2": {"<image>": 63}, "florence2": {"<image>": 63},
    "gemma3": {"<image_soft_token>": 63, "<start_of_image>": 61, "<end_of_image>": 62},
    "qwen2.5-vl": {"<|image_pad|>": 60, "<|video_pad|>": 61, "<|vision_start|>": 62, "<|vision_end|>": 63},
}
EXTRA_SPECIALS = {"qwen2.5-vl": ["<|im_start|>", "<|im_end|>"], "gemma3": ["<start_of_turn>", "<end_of_turn>"],
                  "idefics3-smolvlm": ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
                  + [f"<row_{row}_col_{column}>" for row in (1, 2) for column in (1, 2, 3)]}  # image splitting's


def tiny_tokenizer(family: str):
    """A word-level tokenizer of 64 tokens (``<pad> <s> </s> <unk>``, the family's image tokens at the ids its tiny
    config uses, a few words of the scenes' captions), as transformers' ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"] + EXTRA_SPECIALS.get(family, [])
    fixed = FAMILY_TOKENS[family]
    words = [w for w in specials + list(VLM_WORDS) if w not in fixed]
    vocabulary, free = {}, iter(i for i in range(64) if i not in fixed.values())
    for word in words:
        vocabulary[word] = next(free)
    for index in free:
        vocabulary[f"w{index}"] = index
    vocabulary.update(fixed)
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    named = ({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
             if family == "gemma3" else {"image_token": "<image>"} if family == "florence2" else {})  # what the
    # processors of Gemma 3 and Florence-2 read off their tokenizer
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>", extra_special_tokens=named)
    tokenizer.add_special_tokens({"additional_special_tokens": specials[4:] + list(fixed)})
    return tokenizer


def tiny_processor(family: str, split: bool = False):
    """The family's processor over :func:`tiny_tokenizer`, sized for the tiny model's image (32 px; Qwen2.5-VL 16
    px): as many image tokens as the tiny config places. ``split`` (Idefics3): image splitting on, an image's longest
    side brought to 96 px and cut into tiles of 32 px (up to 2 x 3), then a global view."""
    import transformers as hf

    tokenizer = tiny_tokenizer(family)
    if family == "llava":
        images = hf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        return hf.LlavaProcessor(images, tokenizer, patch_size=8, vision_feature_select_strategy="default",
                                 num_additional_image_tokens=1)
    if family == "paligemma":
        images = hf.SiglipImageProcessor(size={"height": 32, "width": 32})
        images.image_seq_length = 16
        return hf.PaliGemmaProcessor(images, tokenizer)
    if family == "qwen2.5-vl":
        images = hf.Qwen2VLImageProcessor(patch_size=4, temporal_patch_size=2, merge_size=2,
                                          size={"shortest_edge": 256, "longest_edge": 256})
        videos = hf.Qwen2VLVideoProcessor(patch_size=4, temporal_patch_size=2, merge_size=2)
        return hf.Qwen2_5_VLProcessor(images, tokenizer, videos, chat_template=CHAT_TEMPLATES[family])
    if family == "gemma3":
        images = hf.Gemma3ImageProcessor(size={"height": 32, "width": 32})
        return hf.Gemma3Processor(images, tokenizer, chat_template=CHAT_TEMPLATES[family], image_seq_length=4)
    if family == "idefics3-smolvlm":
        images = hf.Idefics3ImageProcessor(do_image_splitting=split, size={"longest_edge": 96 if split else 32},
                                           max_image_size={"longest_edge": 32})
        return hf.Idefics3Processor(images, tokenizer, image_seq_len=4, chat_template=CHAT_TEMPLATES[family])
    if family == "florence2":
        images = hf.CLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32},
                                       do_center_crop=False, image_seq_length=17)
        return hf.Florence2Processor(images, tokenizer)
    if family == "blip-2":
        tokenizer.image_token = "<image>"  # what Blip2Processor reads off its tokenizer (else it adds one more token)
        images = hf.BlipImageProcessor(size={"height": 32, "width": 32})
        return hf.Blip2Processor(images, tokenizer, num_query_tokens=4)
    raise ValueError(family)


def tiny_vlm_folder(family: str, folder, seed: int = 0, split: bool = False):
    """A tiny VLM of ``family`` (random weights, float32) and its processor (``split``: :func:`tiny_processor`'s)
    saved to ``folder`` as a user's ``save_pretrained`` folder; returns the folder."""
    torch.manual_seed(seed)
    model = TINY_VLMS[family]()[0].eval()
    model.save_pretrained(folder)
    tiny_processor(family, split=split).save_pretrained(folder)
    return folder
