"""Lightning callbacks: sparsity-budget annealing, attention statistics, sample videos."""

from .annealing import SparsityAnnealing
from .metrics import LevelShareMetric, RelativeErrorMetric
from .samples import SampleVideos
from .stats import AttentionStats

__all__ = ["AttentionStats", "LevelShareMetric", "RelativeErrorMetric", "SampleVideos", "SparsityAnnealing"]
