"""The interval over starts, seeds and images (capxai.evaluate.hierarchical, issue 35): equal to a slow
implementation that replays the same draws, and on synthetic data with known variance components it covers the
true effect about as often as it says, where an interval over images alone does not."""
import numpy as np
import pytest

from capxai.evaluate.hierarchical import draws, hierarchical_ci, paired_ratio_difference


def _mean(sums):
    return sums[..., 0] / sums[..., 1]


def _slow(per_image, statistic, resamples, seed):
    """The definition, one draw and one cell at a time."""
    starts, seeds, images, _ = per_image.shape
    drawn_starts, drawn_seeds, multiplicity = draws((starts, seeds, images), resamples, seed)
    outcomes = []
    for b in range(resamples):
        cells = []
        for s in range(starts):
            for r in range(seeds):
                model = per_image[drawn_starts[b, s], drawn_seeds[b, s, r]]  # [I, Q]
                sums = sum(multiplicity[b, i] * model[i] for i in range(images))
                cells.append(statistic(sums))
        outcomes.append(np.mean(cells))
    return np.quantile(outcomes, 0.025), np.quantile(outcomes, 0.975)


def _synthetic(rng, starts, seeds, images, start_sd=0.3, seed_sd=0.2, image_sd=0.5, noise_sd=1.0):
    """Per-image differences with a start effect, a seed effect within each start, an image effect shared by all
    models (crossed), and noise; the true mean effect is 0."""
    values = (rng.normal(0, start_sd, (starts, 1, 1)) + rng.normal(0, seed_sd, (starts, seeds, 1))
              + rng.normal(0, image_sd, (1, 1, images)) + rng.normal(0, noise_sd, (starts, seeds, images)))
    return np.stack([values, np.ones_like(values)], -1)


def test_equals_the_slow_definition_on_the_same_draws():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, (3, 2, 15, 4)).astype(float)  # hallucinated / all object words of arm and baseline
    counts[..., 1] += counts[..., 0]
    counts[..., 3] += counts[..., 2]
    fast = hierarchical_ci(counts, paired_ratio_difference, resamples=60, seed=5)
    np.testing.assert_allclose(fast["ci"], _slow(counts, paired_ratio_difference, 60, 5), rtol=1e-12)
    expected = np.mean([[paired_ratio_difference(counts[s, r].sum(0)) for r in range(2)] for s in range(3)])
    assert fast["value"] == pytest.approx(expected) and (fast["starts"], fast["seeds"], fast["images"]) == (3, 2, 15)


def test_it_counts_training_noise_that_an_interval_over_images_misses():
    """60 synthetic experiments of 8 starts x 4 seeds x 150 images: the interval holds the true effect (0) in about
    95 % of them; an interval that resamples images only (the seeds' and starts' noise ignored) in far fewer."""
    rng = np.random.default_rng(1)
    covered = covered_by_images = 0
    experiments = 60
    for experiment in range(experiments):
        data = _synthetic(rng, starts=8, seeds=4, images=150)
        low, high = hierarchical_ci(data, _mean, resamples=400, seed=experiment)["ci"]
        covered += low <= 0 <= high
        per_image = data[..., 0].mean((0, 1))
        means = per_image[rng.integers(0, per_image.size, (400, per_image.size))].mean(1)
        covered_by_images += np.quantile(means, 0.025) <= 0 <= np.quantile(means, 0.975)
    assert covered / experiments >= 0.85, covered
    assert covered_by_images / experiments <= 0.6, covered_by_images


def test_its_width_follows_the_variance_components():
    """Averaged over experiments, the interval's half width is about 1.96 standard errors of the grand mean,
    ``sqrt(s_start^2 / S + s_seed^2 / (S R) + s_image^2 / I + s_noise^2 / (S R I))``."""
    rng = np.random.default_rng(2)
    starts, seeds, images = 8, 4, 150
    standard_error = np.sqrt(0.3 ** 2 / starts + 0.2 ** 2 / (starts * seeds) + 0.5 ** 2 / images
                             + 1.0 / (starts * seeds * images))
    widths = [np.diff(hierarchical_ci(_synthetic(rng, starts, seeds, images), _mean, resamples=400,
                                      seed=k)["ci"])[0] for k in range(30)]
    assert 0.8 <= np.mean(widths) / (2 * 1.96 * standard_error) <= 1.3


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"per_image must be \[starts, seeds, images, quantities\]"):
        hierarchical_ci(np.zeros((2, 3, 4)), _mean)
    one_image = hierarchical_ci(np.ones((2, 2, 1, 2)), _mean)
    assert one_image["value"] == 1.0 and one_image["ci"] == [None, None]
