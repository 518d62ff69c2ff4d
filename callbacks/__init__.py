"""Lightning callbacks: sparsity-budget annealing, attention statistics, sample videos."""

from .annealing import SparsityAnnealing

__all__ = ["SparsityAnnealing"]
