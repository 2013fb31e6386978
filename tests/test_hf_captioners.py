"""Hugging Face image-to-text models (ViT + GPT-2 ``VisionEncoderDecoderModel``, tiny random configs, no download) as
capxai captioners: the adapter's captions equal ``generate``; the generic LRP path through the HF modules conserves
the explained logit (zero biases and position embeddings, tiny eps) from the decoder to the encoder's tokens and from
there through the ViT to the pixels; all words at once equal one at a time; every method gives finite maps."""
import pytest
import torch

from capxai import explain
from capxai.explain.generic_lrp import generic_pixel_relevance, generic_relevance
from capxai.explain.inputs import explained_lengths, prepare
from capxai.models import greedy, hf
from capxai.nn.context import LRPSettings

IMAGE = 32
KINDS = ("vit-gpt2", "blip")
EXACT = LRPSettings(1e-12, 0.0, "constant")


def _blip():
    """A tiny BLIP captioning model (its ViT and BERT text decoder with cross-attention), its own special ids
    ([DEC] 38 starts, [SEP] 39 ends, 0 pads)."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipTextConfig, BlipVisionConfig

    text = BlipTextConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=16, bos_token_id=38, sep_token_id=39,
                          pad_token_id=0, encoder_hidden_size=32)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE, patch_size=8)
    return BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))


def _model(seed=0, dtype=torch.float32, without_offsets=False, kind="vit-gpt2"):
    """A tiny ViT + GPT-2 (or BLIP) with weights spread enough that greedy decoding varies from image to image."""
    torch.manual_seed(seed)
    if kind == "blip":
        model = _blip().eval()
    else:
        model = hf.vit_gpt2(vocab_size=30, image_size=IMAGE, patch_size=8, width=32, max_positions=16).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            norm = "ln" in name or "norm" in name.lower()
            parameter.normal_(0.0, 0.1 if norm else 0.5)
            if norm and name.endswith("weight"):
                parameter.add_(1.0)
            if without_offsets and (name.endswith("bias") or "wpe" in name or "position" in name
                                    or "cls_token" in name or "class_embedding" in name):
                parameter.zero_()  # what makes LRP conservative: nothing added to the signal absorbs relevance
    return model.to(dtype)


def _images(batch=3, seed=1, dtype=torch.float32):
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _with_start(tokens):
    return torch.cat([torch.ones(tokens.shape[0], 1, dtype=torch.long), tokens], dim=1)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_captions_equal_generate(kind):
    model = _model(kind=kind)
    captioner, encoder = hf.split(model)
    images = _images(4)
    with torch.no_grad():
        expected = model.generate(pixel_values=images, max_new_tokens=8, do_sample=False, num_beams=1)
        decoded = greedy(captioner, encoder(images), max_length=8)
    tokens = captioner.to_hf_tokens(decoded.tokens)  # BLIP speaks capxai's ids over its own (remapped)
    assert len({tuple(row) for row in tokens.tolist()}) > 1  # the captions differ: the test can fail
    start = torch.full((4, 1), hf.special_ids(model)[1])
    assert torch.equal(torch.cat([start, tokens], 1)[:, :expected.shape[1]], expected[:, :tokens.shape[1] + 1])


def _decoder_relevance(model, images, settings=EXACT, mask=None):
    captioner, encoder = hf.split(model)
    with torch.no_grad():
        features = encoder(images)
        captions = _with_start(greedy(captioner, features, max_length=6).tokens)
    if mask is None:  # the words up to <end>: <pad> after it is never decoded (a remapped captioner's logit -inf)
        mask = (torch.arange(1, captions.shape[1]) <= explained_lengths(captions)[:, None]).double()
    return captioner, encoder, features, captions, generic_relevance(captioner, features, captions, mask, settings)


@pytest.mark.parametrize("kind", KINDS)
def test_generic_lrp_conserves_the_logit_through_the_hf_decoder(kind):
    model = _model(dtype=torch.float64, without_offsets=True, kind=kind)
    captioner, _, features, captions, relevance = _decoder_relevance(model, _images(dtype=torch.float64))
    total = relevance.features.flatten(2).sum(-1) + relevance.words.sum(-1) + relevance.initial_state
    with torch.no_grad():
        logits = captioner(features, captions).logits
    explained = logits.gather(2, captions[:, 1:, None]).squeeze(2).t()  # [T, B]
    real = (torch.arange(1, captions.shape[1]) <= explained_lengths(captions)[:, None]).t()
    torch.testing.assert_close(total[real], explained[real], rtol=1e-9, atol=1e-9)
    assert (total[~real] == 0).all()
    assert relevance.words.abs().sum() > 0 and relevance.features.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_generic_lrp_all_words_at_once_equal_one_at_a_time(kind):
    model = _model(dtype=torch.float64, kind=kind)
    images = _images(2, dtype=torch.float64)
    captioner, _, features, captions, together = _decoder_relevance(model, images, LRPSettings(0.01, 0.0, "constant"))
    steps = captions.shape[1] - 1
    real = (torch.arange(1, captions.shape[1]) <= explained_lengths(captions)[:, None]).double()
    for k in range(steps):
        only = torch.zeros(captions.shape[0], steps, dtype=torch.float64)
        only[:, k] = real[:, k]
        alone = generic_relevance(captioner, features, captions, only, LRPSettings(0.01, 0.0, "constant"))
        torch.testing.assert_close(alone.features[k], together.features[k])
        torch.testing.assert_close(alone.words[k], together.words[k])


@pytest.mark.parametrize("kind", KINDS)
def test_generic_lrp_conserves_through_the_vit_to_the_pixels(kind):
    model = _model(dtype=torch.float64, without_offsets=True, kind=kind)
    images = _images(dtype=torch.float64)
    _, encoder, _, _, relevance = _decoder_relevance(model, images)
    pixels = generic_pixel_relevance(encoder, images, relevance.features, EXACT)
    assert pixels.shape == (relevance.features.shape[0], 3, 3, IMAGE, IMAGE)
    torch.testing.assert_close(pixels.flatten(2).sum(-1), relevance.features.flatten(2).sum(-1), rtol=1e-9,
                               atol=1e-9)


@pytest.mark.parametrize("method", ["LRP", "GradientXInput", "GuidedBackprop", "GradCAM", "GuidedGradCAM",
                                    "Attention"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_method_explains_the_hf_captioner(method, kind):
    captioner, encoder = hf.split(_model(kind=kind))
    explanation = getattr(explain, method)(captioner, encoder).explain(_images(2), max_length=5)
    maps = [getattr(explanation, name) for name in ("pixel_relevance", "pixel_map") if
            getattr(explanation, name, None) is not None]
    if method == "Attention":
        maps = [explanation.attention]
        assert explanation.attention.shape[-1] == 1 + (IMAGE // 8) ** 2  # the class token and the 4 x 4 patches
        nearest = explain.Attention(captioner, encoder, upsample_mode="nearest").explain(_images(2), max_length=5)
        patches = nearest.attention[..., 1:].unflatten(-1, (4, 4))  # the map: the patches' share, upsampled
        torch.testing.assert_close(nearest.pixel_map[..., ::8, ::8], patches)
        assert tuple(explanation.pixel_map.shape[-2:]) == (IMAGE, IMAGE)
    assert maps and all(torch.isfinite(m).all() for m in maps)
    for heatmap in maps[:1] if method != "Attention" else []:
        assert tuple(heatmap.shape[-2:]) == (IMAGE, IMAGE)


def test_grad_cam_places_the_vit_tokens_on_the_patch_grid():
    """Grad-CAM's default layer on a ViT is its last block; the class token is left out and the 16 patches are the
    4 x 4 grid row by row: a word's map equals the one computed by hand from the block's tokens."""
    captioner, encoder = hf.split(_model())
    cam = explain.GradCAM(captioner, encoder)
    assert cam.layer is encoder.vision.layers[-1]
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    grid = explain.gradients.tokens_to_grid(tokens, (4, 4), 1)
    assert grid.shape == (2, 3, 4, 4) and grid[1, 2, 1, 3] == tokens[1, 1 + 1 * 4 + 3, 2]

    images = _images(2)
    with torch.no_grad():
        captions = _with_start(greedy(captioner, encoder(images), max_length=4).tokens)
    prepared = prepare(captioner, encoder, images, None, captions, 1, 4, None, None)
    _, maps = cam._layer_maps(prepared)  # [T, B, 4, 4]
    block = []
    handle = cam.layer.register_forward_hook(lambda module, inputs, output: block.append(output))
    try:
        logits = captioner(encoder(images), captions).logits
    finally:
        handle.remove()
    word = logits[:, 1].gather(1, captions[:, 2:3]).sum()  # the second word of each caption
    (gradient,) = torch.autograd.grad(word, block[-1])
    patches, patch_gradient = block[-1][:, 1:].detach(), gradient[:, 1:]  # [B, 16, C]
    by_hand = torch.relu((patch_gradient.mean(1, keepdim=True) * patches).sum(-1)).reshape(2, 4, 4)
    torch.testing.assert_close(maps[1], by_hand)


def test_unsupported_architectures_are_named():
    from transformers import GPT2Config, GPT2LMHeadModel
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not supported; the adapter covers VisionEncoderDecoder"):
        hf.split(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)))


def test_images_of_another_size_are_refused():
    _, encoder = hf.split(_model())
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 32, 32\]"):
        encoder(torch.zeros(1, 3, 48, 48))


def test_capxai_train_builds_and_trains_an_hf_captioner(tiny_trained, tmp_path, capsys):
    """``capxai train --model hf-vit-gpt2`` (its ViT encoder chosen for it): a checkpoint that loads back into the
    HF modules, explained by LRP to the pixels; the wrong encoder for the kind is refused by name."""
    from capxai import cli
    from capxai.models import load_trained

    _, data = tiny_trained
    arguments = ["train", "--split-file", data / "dataset_scenes.json", "--image-root", data, "--model", "hf-vit-gpt2",
                 "--hidden", "16",
                 "--layers", "1", "--heads", "2", "--epochs", "1", "--batch-size", "8", "--min-count", "1",
                 "--max-length", "10", "--dropout", "0"]
    assert cli.main([str(a) for a in arguments + ["--out", tmp_path / "model"]]) == 0
    model, vocabulary, config = load_trained(tmp_path / "model" / "best.pt")
    assert config.encoder == "vit" and isinstance(model.captioner, hf.HFCaptioner)
    assert type(model.captioner.decoder).__name__ == "GPT2LMHeadModel"
    assert type(model.encoder.vision).__name__ == "ViTModel"
    images = torch.rand(2, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    explanation = explain.LRP(model, vocabulary=vocabulary).explain(images, max_length=4)
    assert torch.isfinite(explanation.pixel_relevance).all() and explanation.pixel_relevance.abs().sum() > 0
    assert cli.main([str(a) for a in arguments + ["--encoder", "scene", "--out", tmp_path / "other"]]) == 2
    assert "model hf-vit-gpt2 reads the tokens of its own encoder: use encoder 'vit'" in capsys.readouterr().err


def test_a_model_saved_and_loaded_with_from_pretrained_is_explained(tmp_path):
    """What a user does with a local checkpoint folder: save_pretrained, from_pretrained(local_files_only), split."""
    from transformers import VisionEncoderDecoderModel

    _model().save_pretrained(tmp_path / "checkpoint")
    loaded = VisionEncoderDecoderModel.from_pretrained(tmp_path / "checkpoint", local_files_only=True)
    captioner, encoder = hf.split(loaded)
    expected_captioner, expected_encoder = hf.split(_model())
    images = _images(2)
    with torch.no_grad():
        assert torch.equal(greedy(captioner, encoder(images), 6).tokens,
                           greedy(expected_captioner, expected_encoder(images), 6).tokens)
    assert torch.isfinite(explain.LRP(captioner, encoder).explain(images, max_length=4).pixel_relevance).all()


def test_bad_models_and_inputs_are_named():
    model = _model()
    model.config.decoder_start_token_id = 50256  # a tokenizer's id, outside this decoder's 30 tokens
    with pytest.raises(ValueError, match=r"special ids \(0, 50256, 2\) outside the decoder's 30 tokens"):
        hf.split(model)
    captioner, encoder = hf.split(_model())
    with pytest.raises(ValueError, match="a caption longer than the decoder's 16 positions"):
        greedy(captioner, encoder(_images(1)), max_length=20)
    with pytest.raises(ValueError, match="the layer has 17 tokens, not 1 leading \\+ 3 x 3 patches"):
        explain.gradients.tokens_to_grid(torch.zeros(1, 17, 2), (3, 3), 1)
    with pytest.raises(ValueError, match=r"the encoder gives features \[1, 17, 32\], the relevance is for"):
        generic_pixel_relevance(encoder, _images(1), torch.zeros(2, 1, 16, 32), EXACT)


class _ImplicitRules(torch.overrides.TorchFunctionMode):
    """AttnLRP's rules in LXT's "efficient" form, written independently of capxai's: softmax weights and
    LayerNorm's standard deviation detached (the CP-LRP variant: attention weights constant), GELU as
    ``x * (gelu(x) / x).detach()``; then Gradient x Input is LRP-0 layer by layer, biases included (at every layer
    ``R_x = x * W^T (R_y / y)`` with ``R_y = y * grad_y``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.softmax, torch.Tensor.softmax, torch.nn.functional.softmax):
            return func(*args, **kwargs).detach()
        if func is torch.nn.functional.layer_norm:
            x, shape = args[0], tuple(args[1])
            assert len(shape) == 1  # the HF models' LayerNorms normalise the last dimension
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            bias = args[3] if len(args) > 3 else kwargs.get("bias")
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            centred = x - x.mean(-1, keepdim=True)
            normalised = centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt().detach()
            return normalised * weight + bias
        if func is torch.nn.functional.gelu:
            x = args[0]
            return x * (func(*args, **kwargs) / x).detach()
        if func is torch.nn.functional.scaled_dot_product_attention:  # the ViT's attention: written out
            query, key, value = args[:3]
            assert not kwargs.get("is_causal") and not kwargs.get("dropout_p")
            scale = kwargs.get("scale") or query.shape[-1] ** -0.5
            scores = query @ key.transpose(-2, -1) * scale
            if kwargs.get("attn_mask") is not None:
                scores = scores + kwargs["attn_mask"]
            return scores.softmax(-1).detach() @ value
        return func(*args, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_generic_lrp_equals_lxt_style_gradient_x_input(kind):
    """The independent per-word reference: for each word, Gradient x Input of its logit through the HF decoder run
    by the HF code itself under LXT's implicit rules (:class:`_ImplicitRules`), with biases and position
    embeddings as they are, equals capxai's generic LRP (GPT-2 and BLIP) (constant attention, eps 1e-12) on the fed
    words' embeddings and on the encoder's tokens."""
    model = _model(dtype=torch.float64, kind=kind)
    images = _images(2, dtype=torch.float64)
    captioner, _, features, captions, relevance = _decoder_relevance(model, images, EXACT)
    decoder = model.text_decoder if kind == "blip" else model.decoder
    hf_captions = captioner.to_hf_tokens(captions)  # BLIP's own ids (capxai's over them)
    real = torch.arange(1, captions.shape[1]) <= explained_lengths(captions)[:, None]
    checked = 0
    for b in range(captions.shape[0]):
        for k in range(int(real[b].sum())):
            fed = hf_captions[b:b + 1, :k + 1]
            embedded = decoder.get_input_embeddings()(fed).detach().requires_grad_()
            tokens = features[b:b + 1].detach().clone().requires_grad_()
            with _ImplicitRules():  # a copy: BLIP adds its position embeddings into inputs_embeds in place
                logits = decoder(inputs_embeds=embedded.clone(), encoder_hidden_states=tokens,
                                 use_cache=False).logits
            logit = logits[0, -1, hf_captions[b, k + 1]]
            word_grad, token_grad = torch.autograd.grad(logit, (embedded, tokens))
            torch.testing.assert_close(relevance.words[k, b, :k + 1], (embedded * word_grad).sum(-1)[0],
                                       rtol=1e-6, atol=1e-8)
            torch.testing.assert_close(relevance.features[k, b], (tokens * token_grad)[0], rtol=1e-6, atol=1e-8)
            checked += 1
    assert checked >= 6
    # on through the ViT to the pixels: LRP-0 of the encoder from the tokens' relevance R_f is Gradient x Input of
    # sum(f * R_f / f) under the same rules
    encoder = hf.split(model)[1]
    pixels = generic_pixel_relevance(encoder, images, relevance.features, EXACT)
    for k in range(relevance.features.shape[0]):
        leaf = images.clone().requires_grad_()
        with _ImplicitRules():
            tokens = encoder(leaf)
        share = (relevance.features[k] / tokens).detach()
        (gradient,) = torch.autograd.grad((tokens * share).sum(), leaf)
        torch.testing.assert_close(pixels[k], leaf * gradient, rtol=1e-6, atol=1e-8)


def test_gpt2_reordered_and_upcast_attention_is_explained_as_the_plain_one():
    """GPT-2's ``reorder_and_upcast_attn`` computes the same scores with ``torch.baddbmm``: the generic path takes it
    (bilinear in q and k, as ``matmul``) and gives the relevance of the plain attention."""
    images = _images(2)
    plain = _decoder_relevance(_model(), images, LRPSettings(1e-6, 0.0, "constant"))[4]
    reordered_model = _model()
    for block in reordered_model.decoder.transformer.h:
        block.attn.reorder_and_upcast_attn = block.crossattention.reorder_and_upcast_attn = True
    reordered = _decoder_relevance(reordered_model, images, LRPSettings(1e-6, 0.0, "constant"))[4]
    assert reordered.words.abs().sum() > 0
    torch.testing.assert_close(reordered.words, plain.words, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reordered.features, plain.features, rtol=1e-4, atol=1e-5)
