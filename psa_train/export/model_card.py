"""The exported folder's README.md: Hub metadata, a summary of the run, how to load it.

Run numbers come from the checkpoint (step, epoch, budget, density) and from the run's logs:
Lightning's CSV logger (`metrics.csv`) and TensorBoard event files, whichever exist under the
log folders; the last logged value of each metric is reported. Nothing is required: a card
without logs still names the model, its PSA configuration and the usage.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

# Licenses of known base models (the Hub id's prefix). Wan2.1/2.2 are released under Apache-2.0.
KNOWN_LICENSES = {
    "Wan-AI/Wan2.1": "apache-2.0",
    "Wan-AI/Wan2.2": "apache-2.0",
}
BASE_TAGS = ["psa-train", "pyramid-sparse-attention", "sparse-attention", "distillation", "video-generation"]

# Metrics worth a line in the summary (last value); per-layer series are left out.
_INTERESTING = re.compile(r"(loss|density|budget|relative_error|share|psnr|ssim|cosine|mse|acc\d|agreement)", re.I)
_LEFT_OUT = re.compile(r"(/layer_\d+/|(^|/)lr$|epoch$|step$)")
_MAX_ROWS = 40


# --------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------


def find_log_files(roots: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """(metrics.csv files, TensorBoard event files) under the first root that has any."""
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        csvs = sorted(Path(p) for p in glob.glob(str(root / "**" / "metrics.csv"), recursive=True))
        events = sorted(Path(p) for p in glob.glob(str(root / "**" / "events.out.tfevents.*"), recursive=True))
        if csvs or events:
            return csvs, events
    return [], []


def _merge(out: dict[str, tuple[int, float]], key: str, step: int, value: float) -> None:
    if not math.isfinite(value):
        return
    if key not in out or step >= out[key][0]:
        out[key] = (step, value)


def read_csv_metrics(files: Iterable[Path]) -> dict[str, tuple[int, float]]:
    """{metric: (step, last value)} over Lightning CSV logs (older files first)."""
    out: dict[str, tuple[int, float]] = {}
    for f in sorted(files, key=lambda p: p.stat().st_mtime):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    step = int(float(row.get("step") or 0))
                except ValueError:
                    continue
                for key, raw in row.items():
                    if key in ("step", "epoch") or raw in (None, ""):
                        continue
                    try:
                        _merge(out, key, step, float(raw))
                    except ValueError:
                        continue
    return out


def read_tensorboard_metrics(files: Iterable[Path]) -> dict[str, tuple[int, float]]:
    """{metric: (step, last value)} over TensorBoard event files (skipped if tensorboard is missing)."""
    files = list(files)
    if not files:
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return {}
    out: dict[str, tuple[int, float]] = {}
    for f in sorted(files, key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        try:
            acc.Reload()
        except Exception:  # a truncated event file (run killed) keeps what was read
            pass
        for tag in acc.Tags().get("scalars", []):
            for event in acc.Scalars(tag):
                _merge(out, tag, int(event.step), float(event.value))
    return out


def collect_run_metrics(roots: Iterable[str | os.PathLike]) -> tuple[dict[str, tuple[int, float]], list[Path]]:
    """Last value of every scalar logged under the first log root that has logs, and the files read."""
    csvs, events = find_log_files(roots)
    metrics = read_tensorboard_metrics(events)
    for key, (step, value) in read_csv_metrics(csvs).items():
        _merge(metrics, key, step, value)
    return metrics, csvs + events


def summary_metrics(metrics: Mapping[str, tuple[int, float]]) -> list[tuple[str, int, float]]:
    rows = [(k, s, v) for k, (s, v) in metrics.items() if _INTERESTING.search(k) and not _LEFT_OUT.search(k)]
    order = {"train": 0, "val": 1, "test": 2, "psa": 3, "psa_stats": 4}
    rows.sort(key=lambda r: (order.get(r[0].split("/")[0], 5), r[0]))
    return rows[:_MAX_ROWS]


# --------------------------------------------------------------------------------------------
# License and metadata
# --------------------------------------------------------------------------------------------


def _front_matter_license(readme: Path) -> str | None:
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        meta = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def base_license(base: Mapping[str, Any]) -> str | None:
    """The base model's license if known: a table of known ids, the base folder's own model card,
    or a cached copy of the Hub model card (no network)."""
    repo_id, path = base.get("id"), base.get("path")
    if repo_id:
        for prefix, license_ in KNOWN_LICENSES.items():
            if repo_id.startswith(prefix):
                return license_
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(repo_id, "README.md")
            if isinstance(cached, str):
                return _front_matter_license(Path(cached))
        except Exception:
            return None
    if path:
        for folder in (Path(path), Path(path).parent):
            found = _front_matter_license(folder / "README.md")
            if found:
                return found
    return None


def card_metadata(info: Mapping[str, Any], license_: str | None) -> dict[str, Any]:
    base = info["base_model"]
    adapter = info["weights"] == "lora_adapter"
    tags = list(BASE_TAGS)
    if info.get("backbone") == "wan":
        tags += ["wan2.1", "text-to-video"]
    if info.get("trainable") == "lora":
        tags += ["lora"]
    transformers = info.get("library_name") == "transformers"
    if transformers:
        tags = [t for t in BASE_TAGS if t not in ("distillation", "video-generation")]
        tags += ["video-classification", "vision-transformer"]
    meta: dict[str, Any] = {}
    if base.get("id"):
        meta["base_model"] = base["id"]
        meta["base_model_relation"] = "adapter" if adapter else "finetune"
    meta["library_name"] = "transformers" if transformers else "diffusers"
    if transformers:
        meta["pipeline_tag"] = "video-classification"
    if license_:
        meta["license"] = license_
    else:
        meta["license"] = "other"
        meta["license_name"] = "unknown"
    meta["tags"] = tags
    return meta


# --------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _base_description(base: Mapping[str, Any], vision: bool = False) -> str:
    if vision and base.get("named_config") and not base.get("id") and not base.get("path"):
        return f"a randomly initialised VideoMAE/ViT architecture (`backbone: {base['named_config']}`)"
    if base.get("id"):
        sub = f" (subfolder `{base['subfolder']}`)" if base.get("subfolder") else ""
        return f"[`{base['id']}`](https://huggingface.co/{base['id']}){sub}"
    if base.get("path"):
        return f"a local model folder (`{os.path.basename(base['path'].rstrip('/'))}`)"
    if base.get("named_config") == "tiny":
        return "psa-train's tiny, randomly initialised Wan test model (`model: tiny`)"
    if base.get("named_config"):
        return f"a randomly initialised Wan architecture (`model: {base['named_config']}`)"
    return "an unknown base model"


def _transformers_usage(info: Mapping[str, Any], where: str, psa_file: str, fetch: str) -> str:
    cls = info.get("model_class")
    mean, std = info.get("pixel_mean"), info.get("pixel_std")
    norm = f"pixels in [0, 1] normalised with mean {mean} and std {std}" if mean and std else "normalised pixels"
    if cls == "FrameEncoderClassifier":
        plain = (f"# `encoder/` is a transformers model (AutoModel.from_pretrained(\"{where}\", subfolder=\"encoder\")); "
                 "head.safetensors and head.json hold\n# psa-train's frame-averaging head "
                 "(psa_train.modules.video_classifier.FrameEncoderClassifier).")
        call = "logits = model(pixel_values)"
    else:
        plain = f"""import json
from transformers import AutoModelForVideoClassification
{fetch}from psa_train.models.vit import enable_psa_vit

model = AutoModelForVideoClassification.from_pretrained("{where}")
with open({psa_file}) as f:
    enable_psa_vit(model, json.load(f))"""
        call = "logits = model(pixel_values=pixel_values).logits"
    return f"""```python
import psa_train

model = psa_train.from_pretrained("{where}")  # {cls} with PSA enabled
# pixel_values: [batch, frames, 3, height, width], {norm}
{call}

# or with transformers alone, then PSA from psa_config.json:
{plain}
```

Without `enable_psa_vit` the weights run with dense attention."""


def usage_snippet(info: Mapping[str, Any], where: str, on_hub: bool = False) -> str:
    """Python lines that load the export: `where` is the Hub repo id (on_hub) or the local folder."""
    base = info["base_model"]
    pipeline = base.get("id") or "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    if on_hub:
        fetch = "from huggingface_hub import hf_hub_download\n"
        psa_file = f'hf_hub_download("{where}", "psa_config.json")'
    else:
        fetch = ""
        psa_file = f'"{where.rstrip("/")}/psa_config.json"'
    if info.get("library_name") == "transformers":
        return _transformers_usage(info, where, psa_file, fetch)
    if info["weights"] == "lora_adapter":
        base_src = base.get("id") or base.get("path") or "<base model id or folder>"
        sub = base.get("subfolder")
        sub_arg = f', subfolder="{sub}"' if sub and base.get("id") else ""
        return f"""```python
import psa_train

# the base model with this adapter loaded and PSA enabled as trained
transformer = psa_train.from_pretrained("{where}")  # or base_model="<id or folder>" to choose the base

# or with diffusers alone, then PSA from psa_config.json:
import json
from diffusers import WanTransformer3DModel
{fetch}from psa_train.attention import PSAConfig
from psa_train.models import enable_psa

transformer = WanTransformer3DModel.from_pretrained("{base_src}"{sub_arg})
transformer.load_lora_adapter("{where}", weight_name="pytorch_lora_weights.safetensors", prefix="transformer")
with open({psa_file}) as f:
    enable_psa(transformer, PSAConfig.from_dict(json.load(f)))
```"""
    return f"""```python
import psa_train

transformer = psa_train.from_pretrained("{where}")  # WanTransformer3DModel with PSA enabled

# or with diffusers alone, then PSA from psa_config.json:
import json
from diffusers import WanTransformer3DModel
{fetch}from psa_train.attention import PSAConfig
from psa_train.models import enable_psa

transformer = WanTransformer3DModel.from_pretrained("{where}")
with open({psa_file}) as f:
    enable_psa(transformer, PSAConfig.from_dict(json.load(f)))
```

In a pipeline: `WanPipeline.from_pretrained("{pipeline}", transformer=transformer)`.
Without `enable_psa` the weights run with dense attention."""


def render_model_card(
    info: Mapping[str, Any],
    psa_config: Mapping[str, Any],
    *,
    where: str,
    on_hub: bool = False,
    metrics: Mapping[str, tuple[int, float]] | None = None,
    license_: str | None = None,
) -> str:
    """README.md text: YAML metadata, what the model is, the run summary, usage."""
    meta = card_metadata(info, license_)
    base = info["base_model"]
    if info.get("library_name") == "transformers":
        what = (f"A `{info['model_class']}` video classifier ({_fmt(info.get('num_classes'))} classes) whose "
                f"self-attention runs as **Pyramid Sparse Attention (PSA)**, finetuned with psa-train "
                f"{info.get('psa_train_version', '')}. Base model: {_base_description(base, vision=True)}.")
    else:
        what = (f"A `{info['model_class']}` whose self-attention runs as **Pyramid Sparse Attention (PSA)**, "
                f"distilled with psa-train {info.get('psa_train_version', '')} from its own "
                f"dense teacher. Base model: {_base_description(base)}.")
    weights = {
        "full": "the full finetuned model" if info.get("library_name") == "transformers" else "the full finetuned transformer",
        "lora_merged": "the transformer with the trained LoRA adapters merged into its weights",
        "lora_adapter": "the trained LoRA adapter only (load it onto the base model)",
    }[info["weights"]]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {where.rstrip('/').split('/')[-1]}: Pyramid Sparse Attention student",
        "",
        what,
        "",
        f"This folder holds {weights}, `psa_config.json` (the PSA layer configuration at the budget the run "
        "reached) and `psa_train.json` (export details).",
        "",
    ]
    if not license_:
        lines += ["**License:** the base model's license is unknown to the exporter; check it before use or "
                  "redistribution.", ""]
    lines += ["## Run summary", "", "| | |", "|---|---|"]
    lines += [
        f"| training steps | {_fmt(info.get('global_step'))} |",
        f"| epochs completed | {_fmt(info.get('epoch'))} |",
        f"| trainable | {_fmt(info.get('trainable'))} |",
        f"| sparsity budget reached | {_fmt(info.get('budget'))} (target {_fmt(info.get('target_budget'))}) |",
        f"| compute density (last measured) | {_fmt(info.get('density'))} |",
        f"| PSA bands | {psa_config.get('band_mode')} {psa_config.get('bands')} |",
        f"| blocks / layout | {psa_config.get('block_m')}x{psa_config.get('block_n')}, {psa_config.get('layout')} |",
        "",
    ]
    rows = summary_metrics(metrics or {})
    if rows:
        lines += [
            ("Last logged values (`probe_relative_error` is PSA's relative error against dense attention on a "
             "fixed batch):" if info.get("library_name") == "transformers" else
             "Last logged values (`distill_loss` is the MSE between student and teacher velocities; "
             "`probe_relative_error` is PSA's relative error against dense attention on a fixed batch):"),
            "",
            "| metric | value | step |",
            "|---|---|---|",
        ]
        lines += [f"| `{k}` | {v:.6g} | {s} |" for k, s, v in rows]
        lines.append("")
    else:
        lines += ["No training logs were found next to the checkpoint.", ""]
    lines += ["## Usage", "", usage_snippet(info, where, on_hub), ""]
    lines += [
        "## PSA configuration",
        "",
        "```json",
        _json(psa_config),
        "```",
        "",
    ]
    return "\n".join(lines)


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2)
