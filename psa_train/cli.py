"""The `psa-train` command.

Training subcommands (`fit`, `validate`, `test`, `predict`) are LightningCLI's; `data` and
`export` are tools of their own that hand their arguments to the module that implements them.

    psa-train fit --config recipes/tiny_distill.yaml
    psa-train fit --config recipes/tiny_distill.yaml --trainer.max_steps 40 --ckpt_path last
    psa-train fit --config recipes/wan_distill.yaml --print_config
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

TOOL_COMMANDS = {
    "data": "psa_train.data.cli",
}
TRAINING_COMMANDS = ("fit", "validate", "test", "predict")


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psa-train",
        description="Distil dense video transformers into Pyramid Sparse Attention students.",
        epilog="Run `psa-train <command> --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"psa-train {__version__}")
    parser.add_argument(
        "command",
        nargs="?",
        help="one of: " + ", ".join(list(TRAINING_COMMANDS) + sorted(TOOL_COMMANDS)),
    )
    return parser


def _lightning_cli_class():
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    from .modules.distill import ConfigError

    class PSATrainCLI(LightningCLI):
        """LightningCLI whose recipe-value errors end as `error: ...` lines, not tracebacks."""

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except ConfigError as err:
                self.parser.error(str(err))

    return PSATrainCLI, pl


def run_lightning_cli(argv: list[str] | None):
    """Run a LightningCLI subcommand (argv None: from sys.argv); returns the CLI object."""
    cli_class, pl = _lightning_cli_class()
    return cli_class(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "psa-train", "default_env": False},
        args=argv,
        auto_configure_optimizers=False,
    )


def main(argv: list[str] | None = None) -> int:
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _top_level_parser()
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv or ["--help"])
        return 0
    command, rest = argv[0], argv[1:]
    if command in TOOL_COMMANDS:
        import importlib

        module = importlib.import_module(TOOL_COMMANDS[command])
        return int(module.main(rest) or 0)
    if command in TRAINING_COMMANDS:
        run_lightning_cli(None if from_sys_argv else argv)
        return 0
    parser.error(f"unknown command {command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
