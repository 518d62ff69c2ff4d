"""LightningModules: DiT distillation and ViT finetuning."""

from .distill import ConfigError, DistillationModule, build_psa_config

__all__ = ["ConfigError", "DistillationModule", "build_psa_config"]
