"""psa-train: distil dense video transformers into Pyramid Sparse Attention students."""

__version__ = "0.1.0"
