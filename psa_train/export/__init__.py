"""Export finetuned PSA students: library-native folders, psa_config.json, model card, Hub push.

    psa-train export --config RECIPE --ckpt_path CKPT --output DIR [--push-to-hub REPO] [--lora-only]
    model = psa_train.from_pretrained(DIR or REPO)
"""

from .consolidate import CheckpointError, TrainingCheckpoint, consolidate_deepspeed, load_training_checkpoint
from .folder import EXPORT_INFO_NAME, PSA_CONFIG_NAME, ExportError, merge_lora
from .hub import HubPushError, push_to_hub
from .loading import from_pretrained, read_export
from .run import ExportResult, export_checkpoint

__all__ = [
    "CheckpointError",
    "EXPORT_INFO_NAME",
    "ExportError",
    "ExportResult",
    "HubPushError",
    "PSA_CONFIG_NAME",
    "TrainingCheckpoint",
    "consolidate_deepspeed",
    "export_checkpoint",
    "from_pretrained",
    "load_training_checkpoint",
    "merge_lora",
    "push_to_hub",
    "read_export",
]
