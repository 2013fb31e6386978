"""How often the interval over starts, seeds and images (capxai.evaluate.hierarchical) holds the true effect, on
synthetic paired differences with known variance components, for a few numbers of start models; beside it the
interval over images alone (what the fine-tuning tables gave before issue 35).

Run: ``python docs/experiments/finetune-protocol/coverage.py`` (about a minute); prints a markdown table.
"""
import numpy as np

from capxai.evaluate.hierarchical import hierarchical_ci

COMPONENTS = {"start": 0.3, "seed": 0.2, "image": 0.5, "noise": 1.0}  # standard deviations; the true effect is 0
SEEDS, IMAGES, EXPERIMENTS, RESAMPLES = 3, 300, 200, 400


def main() -> None:
    rng = np.random.default_rng(0)
    print("| starts x seeds | over starts, seeds and images | over images only |")
    print("| --- | --- | --- |")
    for starts in (2, 4, 8):
        covered = covered_by_images = 0
        for experiment in range(EXPERIMENTS):
            values = (rng.normal(0, COMPONENTS["start"], (starts, 1, 1))
                      + rng.normal(0, COMPONENTS["seed"], (starts, SEEDS, 1))
                      + rng.normal(0, COMPONENTS["image"], (1, 1, IMAGES))
                      + rng.normal(0, COMPONENTS["noise"], (starts, SEEDS, IMAGES)))
            data = np.stack([values, np.ones_like(values)], -1)
            low, high = hierarchical_ci(data, lambda sums: sums[..., 0] / sums[..., 1], resamples=RESAMPLES,
                                        seed=experiment)["ci"]
            covered += low <= 0 <= high
            per_image = values.mean((0, 1))
            means = per_image[rng.integers(0, IMAGES, (RESAMPLES, IMAGES))].mean(1)
            covered_by_images += np.quantile(means, 0.025) <= 0 <= np.quantile(means, 0.975)
        print(f"| {starts} x {SEEDS} | {covered / EXPERIMENTS:.2f} | {covered_by_images / EXPERIMENTS:.2f} |")


if __name__ == "__main__":
    main()
