"""LightningDataModules over WebDataset shards, latent precompute and the demo data maker."""
