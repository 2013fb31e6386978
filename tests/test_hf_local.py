"""A user's own Hugging Face checkpoint folder (``save_pretrained`` of a ViT + GPT-2 with GPT-2's own special ids, its
image processor and a byte-level BPE tokenizer trained here; nothing downloaded): loaded with capxai's ids over the
tokenizer's, decoded as ``generate`` decodes, explained from ``capxai explain --hf-model``; what a folder lacks, an
architecture the adapter does not cover and a processor of another size are named."""
import numpy as np
import pytest
import torch
from PIL import Image

from capxai import cli, explain
from capxai.explain import Explanation
from capxai.models import greedy, hf
from capxai.models.hf_local import TokenizerVocabulary, load_local

IMAGE = 32
TEXTS = ["a red circle above a blue square", "a green triangle left of a red circle", "two blue squares",
         "a small yellow circle below a green square"]


def _tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 4, vocab_size=290, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")


def _model(vocab_size, special, activation="gelu_new", seed=0):
    """A tiny ViT + GPT-2 whose special ids are a tokenizer's (GPT-2 style: start = end, no pad), with GPT-2's own
    ``gelu_new`` and weights spread enough that its captions vary from image to image."""
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    torch.manual_seed(seed)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64),
        GPT2Config(vocab_size=vocab_size, n_positions=24, n_embd=32, n_layer=2, n_head=2, add_cross_attention=True,
                   is_decoder=True, activation_function=activation, bos_token_id=special, eos_token_id=special))
    config.decoder_start_token_id, config.eos_token_id = special, special
    model = VisionEncoderDecoderModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ln" not in name and "layernorm" not in name:
                parameter.normal_(0.0, 0.4)
    return model


def _save(folder, model, tokenizer, size=IMAGE):
    from transformers import ViTImageProcessor

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = _tokenizer()
    folder = _save(tmp_path_factory.mktemp("hf") / "vit-gpt2", _model(len(tokenizer), tokenizer.eos_token_id),
                   tokenizer)
    pictures = []
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 256, (48, 40, 3), dtype=np.uint8)
        pictures.append(folder.parent / f"picture{index}.png")
        Image.fromarray(pixels).save(pictures[-1])
    return folder, pictures


def _generate(folder, pixel_values, max_new_tokens=8):
    from transformers import VisionEncoderDecoderModel

    model = VisionEncoderDecoderModel.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        return model.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)


def _pixels(local, pictures):
    return torch.stack([local.transform(Image.open(path).convert("RGB").resize((IMAGE, IMAGE)))
                        for path in pictures])


def test_a_local_checkpoint_decodes_as_generate_does(checkpoint):
    folder, pictures = checkpoint
    local = load_local(folder)
    captioner = local.model.captioner
    assert captioner.hf_special_ids == (0, 0, 0) and captioner.vocab_size == captioner.hf_vocab_size + 4
    pixel_values = _pixels(local, pictures)
    expected = _generate(folder, pixel_values)
    with torch.no_grad():
        tokens = greedy(captioner, local.model.encoder(pixel_values), max_length=8).tokens
    assert len({tuple(row) for row in tokens.tolist()}) > 1  # captions differ: the comparison can fail
    for row, hf_row in zip(tokens, expected):
        words = [int(t) for t in row if int(t) != hf.PAD_ID]
        hf_words = [int(t) for t in hf_row[1:]]
        ends = words[-1] == hf.END_ID
        assert captioner.to_hf_tokens(torch.tensor(words)).tolist() == hf_words[:len(words)]
        assert not ends or hf_words[len(words) - 1] == local.vocabulary.tokenizer.eos_token_id


def test_gpt2_gelu_new_is_explained_as_gelu(checkpoint):
    """GPT-2's ``gelu_new`` (tanh form written with ``pow``) becomes ``nn.GELU(approximate="tanh")``: the same
    logits, and the generic LRP path explains the model (it refuses ``pow``)."""
    folder, pictures = checkpoint
    tokenizer = _tokenizer()
    original = _model(len(tokenizer), tokenizer.eos_token_id)
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = original(pixel_values=images, decoder_input_ids=torch.zeros(2, 3, dtype=torch.long)).logits
        assert hf.use_torch_gelu(original) == 2  # one per GPT-2 block
        after = original(pixel_values=images, decoder_input_ids=torch.zeros(2, 3, dtype=torch.long)).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    local = load_local(folder)
    explanation = explain.LRP(local.model).explain(_pixels(local, pictures), max_length=5)
    assert torch.isfinite(explanation.pixel_relevance).all() and explanation.pixel_relevance.abs().sum() > 0


def test_the_tokenizer_is_the_vocabulary(checkpoint):
    folder, _ = checkpoint
    vocabulary = load_local(folder).vocabulary
    assert isinstance(vocabulary, TokenizerVocabulary) and vocabulary.words[:4] == ["<pad>", "<start>", "<end>",
                                                                                     "<unk>"]
    tokenizer = vocabulary.tokenizer
    ids = tokenizer("a red circle above", add_special_tokens=False)["input_ids"]
    assert [vocabulary.index[word] - hf.WORD_OFFSET for word in vocabulary.tokenize("a red circle above")] == ids
    assert vocabulary.index["red"] - hf.WORD_OFFSET == tokenizer.convert_tokens_to_ids("Ġred")  # a word's start
    assert vocabulary.words[hf.WORD_OFFSET + tokenizer.convert_tokens_to_ids("a")] == "##a"  # no space before it


def test_capxai_explain_hf_model_from_the_cli(checkpoint, tmp_path, capsys):
    folder, pictures = checkpoint
    out = tmp_path / "out"
    assert cli.main(["explain", "--hf-model", str(folder), "--images", *map(str, pictures[:2]), "--method", "all",
                     "--max-length", "6", "--out", str(out)]) == 0
    local = load_local(folder)
    expected = _generate(folder, _pixels(local, pictures[:2]), max_new_tokens=6)
    for method in ("lrp", "gradcam", "guided-gradcam", "guided-backprop", "gradient-x-input", "attention"):
        explanation = Explanation.load(out / method / "explanation.pt")
        heatmaps = explanation.heatmaps()
        assert heatmaps.shape[-2:] == (IMAGE, IMAGE) and torch.isfinite(heatmaps).all()
        for words, hf_row in zip(explanation.words, expected):
            tokens = [local.vocabulary.index[word] for word in words if word != "<end>"]
            assert local.model.captioner.to_hf_tokens(torch.tensor(tokens)).tolist() == \
                hf_row[1:len(tokens) + 1].tolist()
        assert len(list((out / method / pictures[0].stem).glob("*.png"))) == int(explanation.lengths[0])
    assert Explanation.load(out / "lrp" / "explanation.pt").run["checkpoint"] == str(folder)
    contrast = tmp_path / "contrast"
    assert cli.main(["explain", "--hf-model", str(folder), "--images", str(pictures[0]), "--contrast", "red",
                     "--no-figures", "--max-length", "4", "--out", str(contrast)]) == 0
    explanation = Explanation.load(contrast / "lrp" / "explanation.pt")
    assert (explanation.contrast == local.vocabulary.index["red"]).all()
    assert cli.main(["explain", "--hf-model", str(folder), "--split-file", str(pictures[0]), "--out",
                     str(tmp_path / "split")]) == 2
    assert "--hf-model explains --images" in capsys.readouterr().err


def test_bad_folders_are_named(checkpoint, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder, _ = checkpoint
    with pytest.raises(FileNotFoundError, match="holds no config.json: not a Hugging Face model folder"):
        load_local(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not a config transformers can read"):
        load_local(tmp_path / "broken")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match=r"a 'gpt2' model \(GPT2LMHeadModel\) is not supported; the adapter covers "
                                         r"VisionEncoderDecoderModel \(a ViT encoder"):
        load_local(tmp_path / "gpt2")
    tokenizer = _tokenizer()
    model = _model(len(tokenizer), tokenizer.eos_token_id)
    other = _save(tmp_path / "other-size", model, tokenizer, size=48)
    with pytest.raises(ValueError, match=r"resizes to \{'height': 48, 'width': 48\}, but the model's ViT takes "
                                         "32x32 images"):
        load_local(other)
    weights = next(other.glob("*.safetensors"))
    intact = weights.read_bytes()
    weights.write_bytes(intact[:len(intact) // 2])  # a download cut short
    with pytest.raises(ValueError, match="the model's weights could not be read"):
        load_local(other)
    weights.write_bytes(intact)
    (other / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="holds no preprocessor_config.json: the model's image processor"):
        load_local(other)
    model.save_pretrained(tmp_path / "no-tokenizer")
    _save(tmp_path / "no-tokenizer", model, tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (tmp_path / "no-tokenizer" / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer transformers can read"):
        load_local(tmp_path / "no-tokenizer")


def test_a_local_blip_checkpoint_decodes_as_generate_and_is_explained(checkpoint, tmp_path):
    """BLIP's captioning model with a WordPiece tokenizer whose [DEC] starts and [SEP] ends a caption (as the
    released BLIP's does), saved with its BLIP image processor: the same from the command line."""
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipTextConfig, BlipVisionConfig)

    _, pictures = checkpoint
    folder = tmp_path / "blip"
    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(" ".join(TEXTS).split())) + ["##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    torch.manual_seed(0)
    text = BlipTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=24, bos_token_id=tokenizer.bos_token_id,
                          sep_token_id=tokenizer.sep_token_id, pad_token_id=0, encoder_hidden_size=32)
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE, patch_size=8)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name.lower():
                parameter.normal_(0.0, 0.4)
        model.text_decoder.cls.predictions.bias[0] = -100.0  # [PAD]: a trained BLIP never says it (capxai never does)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}).save_pretrained(folder)

    local = load_local(folder)
    captioner = local.model.captioner
    assert captioner.hf_special_ids == (0, tokenizer.bos_token_id, tokenizer.sep_token_id)
    assert local.vocabulary.tokenize("two blue squares") == ["two", "blue", "squares"]
    pixel_values = _pixels(local, pictures)
    from transformers import BlipForConditionalGeneration as Loaded
    with torch.no_grad():
        expected = Loaded.from_pretrained(folder, local_files_only=True).eval().generate(
            pixel_values=pixel_values, max_new_tokens=6, do_sample=False, num_beams=1)
        tokens = greedy(captioner, local.model.encoder(pixel_values), max_length=6).tokens
    hf_tokens = captioner.to_hf_tokens(tokens)
    assert len({tuple(row) for row in hf_tokens.tolist()}) > 1
    assert torch.equal(hf_tokens[:, :expected.shape[1] - 1], expected[:, 1:tokens.shape[1] + 1])
    out = tmp_path / "out"
    assert cli.main(["explain", "--hf-model", str(folder), "--images", *map(str, pictures), "--method", "lrp",
                     "--max-length", "6", "--no-figures", "--out", str(out)]) == 0
    explanation = Explanation.load(out / "lrp" / "explanation.pt")
    assert torch.equal(explanation.tokens[:, :tokens.shape[1]], tokens[:, :explanation.tokens.shape[1]])
    assert torch.isfinite(explanation.pixel_relevance).all() and explanation.pixel_relevance.abs().sum() > 0


def test_a_model_part_lrp_has_no_rule_for_is_named_in_one_line(checkpoint, tmp_path, capsys):
    """A checkpoint whose GPT-2 uses ``gelu_10`` (GELU clipped with ``torch.clip``, which has no relevance rule): the
    command answers with the refusal (exit 2, no traceback, not "internal error") and writes nothing."""
    _, pictures = checkpoint
    tokenizer = _tokenizer()
    folder = _save(tmp_path / "clipped", _model(len(tokenizer), tokenizer.eos_token_id, activation="gelu_10"),
                   tokenizer)
    out = tmp_path / "out"
    assert cli.main(["explain", "--hf-model", str(folder), "--images", str(pictures[0]), "--out", str(out),
                     "--no-figures"]) == 2
    error = capsys.readouterr().err
    assert "capxai explain: capxai.nn.relevance_rules: no relevance rule for" in error and "clip" in error
    assert "internal error" not in error and "Traceback" not in error
    assert not (out / "lrp" / "explanation.pt").exists()
