"""Accuracy of the tiny ViT recipe, dense vs PSA at the recipe's budget, against chance (CPU).

Trains `recipes/tiny_vit.yaml` twice through LightningCLI (the parser `psa-train fit` uses):
once dense (the annealing callback held at budget 0: plain SDPA throughout) and once as the
recipe says (dense, then annealed to budget 1 = its PSA bands). Each run is then validated on
the validation shard and, for a less noisy number, on the training shards; PSA runs are
validated at their final budget. Logs go to a temporary folder; checkpoints are not written.

    psa-train data make-demo --output data/demo      # once
    python benchmarks/tiny_vit_accuracy.py            # ~3-5 minutes on 2 CPU cores
    python benchmarks/tiny_vit_accuracy.py --max-steps 60 --runs psa   # quicker look
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import sys
import tempfile
import time

import torch
import yaml

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "tiny_vit.yaml")
ANNEALING = "psa_train.callbacks.SparsityAnnealing"


def _config(recipe: dict, run: str, root: str, max_steps: int | None) -> dict:
    cfg = copy.deepcopy(recipe)
    trainer = cfg["trainer"]
    trainer["default_root_dir"] = root
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": root, "name": run, "version": ""}}
    trainer["enable_checkpointing"] = False
    trainer["enable_progress_bar"] = False
    callbacks = [c for c in trainer.get("callbacks", []) if not c["class_path"].endswith("ModelCheckpoint")]
    for c in callbacks:
        if c["class_path"] == ANNEALING and run == "dense":
            c["init_args"].update(start_budget=0.0, end_budget=0.0)
    trainer["callbacks"] = callbacks
    if max_steps is not None:
        trainer["max_steps"] = max_steps
        trainer["val_check_interval"] = max(1, max_steps // 3)
        for c in callbacks:
            if c["class_path"] == ANNEALING:
                # keep the recipe's proportions: dense first half, annealed over the next quarter
                c["init_args"].update(start_step=max_steps // 2, end_step=max(max_steps // 2 + 1, 3 * max_steps // 4))
    if run == "dense":
        cfg["model"]["init_args"].setdefault("psa", {})["budget"] = 0.0
    return cfg


def _train(cfg: dict) -> dict:
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from psa_train.data import VideoShardDataModule

    start = time.perf_counter()
    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, args=cfg, run=False, save_config_callback=None,
                       auto_configure_optimizers=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - start
    val = trainer.validate(model, datamodule=dm, verbose=False)[0]
    labels = [int(l) for b in dm.val_dataloader() for l in b["label"]]
    init = dict(cfg["data"]["init_args"], val_shards=cfg["data"]["init_args"]["train_shards"])
    train_dm = VideoShardDataModule(**init)
    train = trainer.validate(model, dataloaders=train_dm.val_dataloader(), verbose=False)[0]
    return {
        "fit_s": fit_s,
        "val_acc1": val["val/acc1"],
        "train_acc1": train["val/acc1"],
        "density": val.get("val/density", float("nan")),
        "budget": model.budget,
        "val_labels": labels,
        "num_classes": model.hparams.num_classes,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=RECIPE)
    p.add_argument("--runs", nargs="+", choices=("dense", "psa"), default=["dense", "psa"])
    p.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps (schedule scaled)")
    args = p.parse_args(argv)
    with open(args.recipe, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    shards = recipe["data"]["init_args"]["val_shards"]
    if not os.path.exists(shards):
        print(f"{shards} not found: run `psa-train data make-demo --output data/demo` first", file=sys.stderr)
        return 2

    results = {}
    with tempfile.TemporaryDirectory(prefix="tiny_vit_acc_") as root:
        for run in args.runs:
            results[run] = _train(_config(recipe, run, root, args.max_steps))

    first = next(iter(results.values()))
    n, counts = first["num_classes"], collections.Counter(first["val_labels"])
    majority = max(counts.values()) / len(first["val_labels"])
    steps = args.max_steps or recipe["trainer"]["max_steps"]
    print(f"\n# tiny ViT recipe ({os.path.basename(args.recipe)}): {steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"# chance: 1/{n} = {1 / n:.3f}; majority class of the {len(first['val_labels'])} validation clips "
          f"= {majority:.3f}\n")
    print("| run | final budget | density | val acc@1 | train-set acc@1 | fit s |")
    print("|---|---:|---:|---:|---:|---:|")
    for run, r in results.items():
        print(f"| {run} | {r['budget']:.2f} | {r['density']:.3f} | {r['val_acc1']:.3f} | {r['train_acc1']:.3f} | "
              f"{r['fit_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
