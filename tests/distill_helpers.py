"""Helpers for the distillation/CLI/resume/DeepSpeed tests: a small demo dataset and the tiny
recipe rewritten to point at it (and at a run folder of the test's own)."""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TINY_RECIPE = REPO / "recipes" / "tiny_distill.yaml"
# Where DeepSpeed's JIT-built ops (the CPU shm comm op, ~45-90 s to build once) are cached.
TORCH_EXTENSIONS_DIR = os.environ.get(
    "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "psa-train" / "torch_extensions")
)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small demo dataset (16 train + 4 val clips) made once per session by `make_demo`."""
    root = tmp_path_factory.getbasetemp() / "demo_small"
    if not (root / "manifest.json").exists():
        from psa_train.data.demo import make_demo

        make_demo(root, num_clips=20, num_val=4, train_shards=2, progress=False, overwrite=True)
    return root


def tiny_recipe(tmp_path: Path, demo: Path, *, every_n_steps: int = 10, **trainer: object) -> Path:
    """recipes/tiny_distill.yaml with data and run folders moved under tmp_path; returns its path."""
    cfg = yaml.safe_load(TINY_RECIPE.read_text())
    run = tmp_path / "run"
    cfg["trainer"]["default_root_dir"] = str(run)
    cfg["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run), "name": "logs", "version": ""},
    }
    ckpt = cfg["trainer"]["callbacks"][0]["init_args"]
    ckpt["dirpath"] = str(run / "checkpoints")
    ckpt["every_n_train_steps"] = every_n_steps
    # Sampling clips at every validation is slow and tested on its own (test_sample_videos.py).
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if "SampleVideos" not in c["class_path"]]
    cfg["trainer"]["enable_progress_bar"] = False
    cfg["trainer"].update(trainer)
    data = cfg["data"]["init_args"]
    data["train_shards"] = str(demo / "latents" / "train-{000000..000001}.tar")
    data["val_shards"] = str(demo / "latents" / "val-000000.tar")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def logged(run: Path, key: str = "train/loss", root: bool = False) -> dict[int, float]:
    """{step: value} of a metric over all CSV logs under run/logs (or under `run` itself if
    root); files are read oldest first, so a resumed run's values win."""
    files = glob.glob(str((run if root else run / "logs") / "**" / "metrics.csv"), recursive=True)
    out: dict[int, float] = {}
    for f in sorted(files, key=os.path.getmtime):
        with open(f) as fh:
            for row in csv.DictReader(fh):
                if row.get(key):
                    out[int(row["step"])] = float(row[key])
    return out


def psa_train(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `psa-train` command (as `python -m psa_train.cli`) in a fresh process."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "psa_train.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(REPO),
    )
