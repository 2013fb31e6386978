"""The LLaVA-style captioner (``capxai train --model hf-llava``: a CLIP tower, an MLP projector, a LLaMA reading the
image tokens as its prefix; tiny random configs): the generic LRP path conserves the explained logit (zero biases
and position embeddings, tiny eps) from the logits over the LLaMA and the projector to the image tokens and the
words, and on through CLIP to the pixels; all words at once equal one at a time; every method gives finite maps;
``capxai train`` trains it and ``load_trained`` reads it back."""
import pytest
import torch

from capxai.explain import make_explainer
from capxai.explain.generic_lrp import generic_pixel_relevance, generic_relevance
from capxai.explain.inputs import explained_lengths
from capxai.models import greedy
from capxai.models.factory import TrainConfig, build_model
from capxai.nn.context import LRPSettings

pytest.importorskip("transformers")

IMAGE = 32
EXACT = LRPSettings(1e-12, 0.0, "constant")
CONFIG = TrainConfig(model="hf-llava", hidden=16, layers=2, heads=2, image_size=IMAGE, max_length=6)


def _model(seed=0, without_offsets=False):
    torch.manual_seed(seed)
    model = build_model(CONFIG, vocab_size=24).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0.0, 0.5)
            if without_offsets and (name.endswith("bias") or "position" in name or "class_embedding" in name):
                parameter.zero_()
    return model


def _relevance(model, images, settings=EXACT):
    with torch.no_grad():
        features = model.encoder(images)
        tokens = greedy(model.captioner, features, max_length=5).tokens
    captions = torch.cat([torch.ones(tokens.shape[0], 1, dtype=torch.long), tokens], 1)
    mask = (torch.arange(1, captions.shape[1]) <= explained_lengths(captions)[:, None]).double()
    return features, captions, mask, generic_relevance(model.captioner, features, captions, mask, settings)


def _images(batch=2):
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1)).double()


def test_lrp_conserves_the_logit_over_the_image_tokens_and_words_and_on_to_the_pixels():
    model = _model(without_offsets=True)
    images = _images()
    features, captions, mask, relevance = _relevance(model, images)
    assert features.shape[1] == (IMAGE // 8) ** 2 + 1  # the class token and the 4 x 4 patches
    total = relevance.features.flatten(2).sum(-1) + relevance.words.sum(-1) + relevance.initial_state
    with torch.no_grad():
        logits = model.captioner(features, captions).logits
    explained = logits.gather(2, captions[:, 1:, None]).squeeze(2).t()
    real = mask.t().bool()
    # HF's RMSNorm computes in float32 whatever the model's dtype: as exact as float32 (tests/test_vlm_rules.py)
    torch.testing.assert_close(total[real], explained[real], rtol=1e-6, atol=1e-9)
    assert relevance.words.abs().sum() > 0 and relevance.features.abs().sum() > 0
    pixels = generic_pixel_relevance(model.encoder, images, relevance.features, EXACT)
    torch.testing.assert_close(pixels.flatten(2).sum(-1), relevance.features.flatten(2).sum(-1), rtol=1e-9,
                               atol=1e-9)


def test_all_words_at_once_equal_one_at_a_time():
    model = _model(seed=2)
    features, captions, mask, together = _relevance(model, _images(), LRPSettings(0.01, 0.0, "constant"))
    for k in range(mask.shape[1]):
        only = torch.zeros_like(mask)
        only[:, k] = mask[:, k]
        alone = generic_relevance(model.captioner, features, captions, only, LRPSettings(0.01, 0.0, "constant"))
        torch.testing.assert_close(alone.features[k], together.features[k])
        torch.testing.assert_close(alone.words[k], together.words[k])


@pytest.mark.parametrize("method", ["lrp", "gradient-x-input", "gradcam", "guided-backprop", "attention"])
def test_every_method_gives_finite_maps_of_the_images_size(method):
    from capxai.data.vocabulary import Vocabulary

    model = _model(seed=3).float()
    vocabulary = Vocabulary(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(20)])
    explanation = make_explainer(method, model, vocabulary).explain(_images().float(), captions=["w1 w2 w3", "w4"])
    maps = explanation.heatmaps()
    assert maps.shape == (2, 4, IMAGE, IMAGE) and bool(torch.isfinite(maps).all()) and maps.abs().sum() > 0
    if method == "attention":  # the LLaMA's attention from each word to the image tokens, mean over layers
        assert explanation.attention.shape[-1] == (IMAGE // 8) ** 2 + 1


def test_capxai_train_trains_it_on_the_scenes_and_load_trained_reads_it(tiny_trained, tmp_path, capsys):
    from capxai.cli import main
    from capxai.models import load_trained

    _, data = tiny_trained
    out = tmp_path / "llava"
    code = main(["train", "--model", "hf-llava", "--split-file", str(data / "dataset_scenes.json"), "--image-root",
                 str(data), "--out", str(out), "--epochs", "1", "--hidden", "16", "--layers", "1", "--heads", "2",
                 "--batch-size", "8", "--min-count", "1", "--max-length", "10"])
    assert code == 0, capsys.readouterr().err
    model, vocabulary, config = load_trained(out / "best.pt")
    assert config.model == "hf-llava" and config.encoder == "clip"
    with torch.no_grad():
        images = torch.rand(2, 3, config.image_size, config.image_size)
        decoded = greedy(model.captioner, model.encoder(images), max_length=4)
    assert decoded.tokens.shape[0] == 2


def test_teacher_forcing_in_one_pass_equals_stepping():
    from capxai.models.captioner import Captioner

    model = _model(seed=4)
    features = model.encoder(_images(3))
    captions = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 10, 2, 0]])
    with torch.no_grad():
        once = model.captioner(features, captions)
        stepped = Captioner.forward(model.captioner, features, captions)  # the base class: one step at a time
    torch.testing.assert_close(once.logits, stepped.logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(once.activations["attention"], stepped.activations["attention"], rtol=1e-9,
                               atol=1e-9)
