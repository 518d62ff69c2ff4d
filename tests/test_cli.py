"""`psa-train`: LightningCLI subcommands, recipes, error messages, the tool dispatch."""

import sys
import types
from pathlib import Path

import pytest
import yaml
from distill_helpers import REPO, demo_data, logged, psa_train, tiny_recipe  # noqa: F401

from psa_train import cli

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def _printed_yaml(out: str) -> dict:
    # DeepSpeed's import logs "[date] [WARNING] ... Setting accelerator to CPU" to stdout on
    # machines without a GPU; everything else printed is the config.
    return yaml.safe_load("\n".join(line for line in out.splitlines() if not line.startswith("[20")))


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "fit" in out and "data" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and "psa-train" in capsys.readouterr().out


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code != 0 and "frobnicate" in capsys.readouterr().err


def test_tool_commands_are_dispatched(monkeypatch):
    seen = []
    fake = types.ModuleType("fake_tool")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "fake_tool", fake)
    monkeypatch.setitem(cli.TOOL_COMMANDS, "data", "fake_tool")
    assert cli.main(["data", "make-demo", "--output", "x"]) == 3
    assert seen == [["make-demo", "--output", "x"]]


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_parses_and_prints_its_config(recipe, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "--config", str(recipe), "--print_config"])
    assert exc.value.code in (0, None)
    printed = _printed_yaml(capsys.readouterr().out)
    init = printed["model"]["init_args"]
    if printed["model"]["class_path"].endswith("VideoClassifier"):  # the ViT recipes
        expected_keys = ("psa", "teacher", "kd_weight", "lr", "label_key")
        assert printed["data"]["class_path"] == "psa_train.data.VideoShardDataModule"
    else:
        assert printed["model"]["class_path"] == "psa_train.modules.DistillationModule"
        expected_keys = ("psa", "trainable", "lr", "timestep_shift", "cfg_dropout", "gradient_checkpointing")
        assert printed["data"]["class_path"] == "psa_train.data.LatentShardDataModule"
    for key in expected_keys:
        assert key in init, key


def test_dotted_overrides_reach_the_config(capsys):
    with pytest.raises(SystemExit):
        cli.main([
            "fit", "--config", str(REPO / "recipes/tiny_distill.yaml"), "--print_config",
            "--model.init_args.lr", "3e-4", "--model.init_args.psa.budget", "0.25", "--trainer.max_steps", "7",
        ])
    printed = _printed_yaml(capsys.readouterr().out)
    assert printed["model"]["init_args"]["lr"] == 3e-4
    assert printed["model"]["init_args"]["psa"]["budget"] == 0.25
    assert printed["model"]["init_args"]["psa"]["block_m"] == 64  # the rest of the dict is kept
    assert printed["trainer"]["max_steps"] == 7


def _bad_recipe(tmp_path: Path, edit) -> Path:
    cfg = yaml.safe_load((REPO / "recipes/tiny_distill.yaml").read_text())
    edit(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c: c["model"]["init_args"].update(learning_rate=1e-3), "learning_rate"),
        (lambda c: c["model"]["init_args"].update(lr="fast"), "lr"),
        (lambda c: c["trainer"].update(max_stepz=3), "max_stepz"),
        (lambda c: c["model"]["init_args"].update(trainable=["full"]), "trainable"),
        (lambda c: c["model"]["init_args"].update(trainable="half"), "trainable"),
        (lambda c: c["model"]["init_args"].update(psa_preset="wan22"), "psa_preset"),
    ],
    ids=["unknown-model-key", "wrong-type", "unknown-trainer-key", "wrong-type-list", "bad-choice", "bad-preset"],
)
def test_bad_recipe_keys_fail_with_a_message_naming_them(tmp_path, capsys, edit, needle):
    path = _bad_recipe(tmp_path, edit)
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "--config", str(path)])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert needle in err and "error" in err.lower()


@pytest.mark.parametrize(
    "psa,needle",
    [({"bnad_mode": "quota"}, "bnad_mode"), ({"block_m": 48}, "block_m"), ({"layout": "spiral"}, "layout")],
)
def test_bad_psa_values_fail_cleanly_at_instantiation(tmp_path, capsys, psa, needle):
    path = _bad_recipe(tmp_path, lambda c: c["model"]["init_args"].update(psa=psa))
    with pytest.raises(SystemExit) as exc:
        cli.main(["fit", "--config", str(path)])
    assert exc.value.code not in (0, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0] and "model.psa" in errors[0]


def test_console_script_reports_a_bad_key_and_exits_nonzero(tmp_path):
    path = _bad_recipe(tmp_path, lambda c: c["model"]["init_args"].update(psa_presett="wan21_1_3b"))
    result = psa_train("fit", "--config", str(path), timeout=300)
    assert result.returncode != 0
    assert "psa_presett" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_tiny_recipe_trains_validates_and_reruns_in_the_same_folder(tmp_path, demo_data):  # noqa: F811
    recipe = tiny_recipe(tmp_path, demo_data, max_steps=4, val_check_interval=2, limit_val_batches=1)
    run = tmp_path / "run"
    cli.main(["fit", "--config", str(recipe)])
    losses = logged(run)
    assert sorted(losses) == [0, 1, 2, 3] and all(v > 0 for v in losses.values())
    assert logged(run, "val/loss") and logged(run, "train/density")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "logs" / "config.yaml").is_file()
    # the same command again in the same folder works (config.yaml is overwritten)
    cli.main(["fit", "--config", str(recipe), "--trainer.max_steps", "2"])
    # validate, test and predict from the checkpoint (test/predict read the held-out shards)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    cli.main(["validate", "--config", str(recipe), "--ckpt_path", ckpt])
    cli.main(["test", "--config", str(recipe), "--ckpt_path", ckpt])
    assert logged(run, "test/loss")
    cli.main(["predict", "--config", str(recipe), "--ckpt_path", ckpt])
