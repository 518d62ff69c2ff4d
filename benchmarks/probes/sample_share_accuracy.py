"""What a smaller sampled share would cost the level maps (CPU).

Why: block scoring's products and exponentials grow with the square of the sampled share; at the
default quarter, scoring + assignment take ~29 % of the sparse forward on an H200 against the
issue's 15 % (benchmarks/NOTES.md, ninth session), and an eighth would cut pass 1's work four-fold.
This compares the level maps of scores from a quarter, an eighth and a sixteenth of the tokens
with those of exact scores (every token), on the fp8 probe's inputs (Gaussian and structured),
for a quota and a threshold configuration.

    python benchmarks/probes/sample_share_accuracy.py
"""

from __future__ import annotations

import torch
from fp8_scoring_accuracy import CONFIGS, compare, inputs

from psa_train.attention.levels import assign_levels
from psa_train.attention.scoring import block_scores

SHARES = (0.25, 0.125, 0.0625)


def main():
    gen = torch.Generator().manual_seed(0)
    for kind in ("gaussian", "structured"):
        q, k = inputs(kind, gen)
        exact = block_scores(q, k, 128, 64, 1.0, backend="torch")
        sampled = {share: block_scores(q, k, 128, 64, share, backend="torch") for share in SHARES}
        print(kind + ": score rel. difference to every token sampled: " + ", ".join(
            f"{share:g} {((s - exact).norm() / exact.norm()).item():.2e}" for share, s in sampled.items()))
        for name, cfg in CONFIGS.items():
            ref = assign_levels(exact, cfg, backend="torch")
            print(f"  {name}: " + " | ".join(
                f"{share:g}: {compare(assign_levels(s, cfg, backend='torch'), ref)}" for share, s in sampled.items()))


if __name__ == "__main__":
    main()
