"""Visual contrastive decoding (capxai.models.contrastive_decoding, issue 35): the contrast and the plausibility cut
on known logits; with no contrast, or a "distorted" image equal to the clean one, it decodes what plain beam search
decodes; VCD's diffusion noise; ``capxai evaluate --vcd`` and its bad input."""
import json
import math

import pytest
import torch

from capxai import cli
from capxai.models import AdaptiveAttentionCaptioner, beam_search
from capxai.models.contrastive_decoding import (VCDSettings, VisualContrastiveCaptioner, contrast_logits,
                                                diffusion_noise)


def test_the_contrast_and_the_plausibility_cut_on_known_logits():
    clean, distorted = torch.tensor([[2.0, 1.0, -5.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    # p(clean) = 0.73, 0.27, 0.0005: the third word is under 0.1 x the largest, so it is cut
    expected = torch.tensor([[3.0, 1.0, -math.inf]])
    torch.testing.assert_close(contrast_logits(clean, distorted, alpha=1.0, beta=0.1), expected)
    torch.testing.assert_close(contrast_logits(clean, distorted, alpha=0.5, beta=0.0),
                               torch.tensor([[2.5, 1.0, -7.5]]))


def _captioner(seed=0):
    torch.manual_seed(seed)
    return AdaptiveAttentionCaptioner(12, 6, hidden=8, attention_dim=5, dropout=0.0).eval()


@pytest.mark.parametrize("beam", [1, 3])
def test_no_contrast_or_an_undistorted_image_decodes_as_plain_beam_search(beam):
    captioner, features, other = _captioner(), torch.randn(4, 5, 6), torch.randn(4, 5, 6)
    plain = beam_search(captioner, features, beam, 6).tokens
    no_contrast = VisualContrastiveCaptioner(captioner, VCDSettings(alpha=0.0, beta=0.0))
    assert torch.equal(beam_search(no_contrast, torch.stack([features, other], 1), beam, 6).tokens, plain)
    undistorted = VisualContrastiveCaptioner(captioner, VCDSettings(alpha=3.0, beta=0.0))  # (1 + a) z - a z = z
    assert torch.equal(beam_search(undistorted, torch.stack([features, features], 1), beam, 6).tokens, plain)
    contrasted = VisualContrastiveCaptioner(captioner, VCDSettings(alpha=3.0, beta=0.0))
    assert not torch.equal(beam_search(contrasted, torch.stack([features, other], 1), beam, 6).tokens, plain)
    with pytest.raises(ValueError, match=r"features must be \[B, 2, \.\.\.\]"):
        contrasted.init_state(features)


def test_diffusion_noise_is_vcds_and_the_same_for_an_image_in_any_batch():
    images = torch.randn(3, 3, 8, 8)
    noisy = diffusion_noise(images, 500, seeds=[7, 8, 9])
    torch.testing.assert_close(diffusion_noise(images[1:2], 500, seeds=[8]), noisy[1:2])
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    kept = float(torch.cumprod(1 - betas, 0)[500])  # VCD's step 500: about 0.078 of the image left
    noise = (noisy - kept ** 0.5 * images) / (1 - kept) ** 0.5
    assert abs(float(noise.std()) - 1.0) < 0.15 and abs(kept - 0.078) < 0.01
    torch.testing.assert_close(diffusion_noise(images, 0, seeds=[1, 2, 3]), images, atol=0.05, rtol=0.0)
    with pytest.raises(ValueError, match="alpha must be >= 0, beta in"):
        VCDSettings(beta=1.5)


def test_evaluate_with_vcd(tiny_trained, tmp_path, capsys):
    checkpoint, data = tiny_trained
    common = ["evaluate", "--checkpoint", str(checkpoint), "--split-file", str(data / "dataset_scenes.json"),
              "--image-root", str(data), "--beam-size", "2"]
    assert cli.main(common + ["--out", str(tmp_path / "vcd"), "--vcd", "1:0.1"]) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "vcd" / "metrics_test_beam2.json").read_text())
    assert metrics["run"]["vcd"] == {"alpha": 1.0, "beta": 0.1, "noise_step": 500, "seed": 0}
    for bad, message in ((["--vcd", "1:2"], r"must be in \[0, 1\]"), (["--vcd", "1"], "ALPHA:BETA"),
                         (["--vcd", "1:0.1", "--explanations", "lrp"], "--vcd is not combined")):
        capsys.readouterr()
        assert cli.main(common + ["--out", str(tmp_path / "bad")] + bad) == 2
        assert message.replace("\\", "") in capsys.readouterr().err or pytest.fail(bad)
