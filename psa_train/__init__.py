"""psa-train: distil dense video transformers into Pyramid Sparse Attention students."""

__version__ = "0.1.0"


def from_pretrained(path_or_repo_id, **kwargs):
    """Load a `psa-train export` folder or Hub repo: the model with PSA enabled as exported.

    See `psa_train.export.loading.from_pretrained` for the options (torch_dtype, device,
    base_model for adapter exports, budget, psa=False for dense). Imports torch on first call.
    """
    from .export.loading import from_pretrained as _from_pretrained

    return _from_pretrained(path_or_repo_id, **kwargs)
