"""LightningModules: DiT distillation and ViT finetuning."""

from .distill import ConfigError, DistillationModule, build_psa_config
from .video_classifier import VideoClassifier

__all__ = ["ConfigError", "DistillationModule", "VideoClassifier", "build_psa_config"]
