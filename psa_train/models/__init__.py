"""Backbone adapters that swap self-attention for PSA (Wan via diffusers, ViTs via transformers)."""
