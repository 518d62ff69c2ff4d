"""torchmetrics metrics for PSA layers: they hold sums, so they reduce correctly across processes."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from psa_train.attention import LEVEL_VALUES


class LevelShareMetric(Metric):
    """Blocks seen at each level {0, 1, 2, 4, 8}; computes the shares and the compute density."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("counts", default=torch.zeros(len(LEVEL_VALUES), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, counts: torch.Tensor) -> None:
        self.counts += counts.to(self.counts.device, torch.float64)

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.counts.sum().clamp_min(1)
        shares = self.counts / total
        inverse_level = torch.tensor([0.0] + [1.0 / s for s in LEVEL_VALUES[1:]], dtype=torch.float64,
                                     device=shares.device)
        result = {f"level_{level}_share": shares[i] for i, level in enumerate(LEVEL_VALUES)}
        result["density"] = (shares * inverse_level).sum()
        return result


class RelativeErrorMetric(Metric):
    """‖approx − exact‖ / ‖exact‖ over everything it was given (sums of squares, summed across ranks)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("error_sq", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("exact_sq", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, approx: torch.Tensor, exact: torch.Tensor) -> None:
        difference = approx.to(torch.float64) - exact.to(torch.float64)
        self.error_sq += difference.square().sum().to(self.error_sq.device)
        self.exact_sq += exact.to(torch.float64).square().sum().to(self.exact_sq.device)

    def compute(self) -> torch.Tensor:
        return (self.error_sq / self.exact_sq.clamp_min(torch.finfo(torch.float64).tiny)).sqrt()
