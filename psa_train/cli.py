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
    "export": "psa_train.export.cli",
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


# Lines of jsonargparse's messages that repeat the whole given value or the Union machinery of
# subclass mode; what remains names the key and what was expected.
_NOISE = ("Given value", "Subtypes:", "Does not validate against any of the Union subtypes",
          "- Expected a <class 'NoneType'>", "Errors:")


def _trim_error(message: str) -> str:
    lines = [line for line in message.splitlines() if not line.strip().startswith(_NOISE)]
    return "\n".join(lines) if any(line.strip() for line in lines) else message


def _find_in_chain(err: BaseException, kind: type) -> BaseException | None:
    """`err` or the first exception of type `kind` in its cause/context chain."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _lightning_cli_class():
    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from .modules.distill import ConfigError

    class PSATrainArgumentParser(LightningArgumentParser):
        """Errors as a one-line usage and the message, without jsonargparse's value dumps."""

        def print_usage(self, file=None) -> None:
            prog = self.prog.replace(" [options]", "")
            (file or sys.stdout).write(f"usage: {prog} --config RECIPE [--section.key VALUE ...]\n")

        def error(self, message: str, ex: Exception | None = None):
            return super().error(_trim_error(message), ex)

    class PSATrainCLI(LightningCLI):
        """LightningCLI whose recipe errors end as short `error: ...` messages, not tracebacks."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("parser_class", PSATrainArgumentParser)
            super().__init__(*args, **kwargs)

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except ValueError as err:  # jsonargparse wraps errors of subclass-mode classes
                cause = _find_in_chain(err, ConfigError)
                if cause is None:
                    raise
                self.parser.error(str(cause))

    return PSATrainCLI, pl


def run_lightning_cli(argv: list[str] | None):
    """Run a LightningCLI subcommand (argv None: from sys.argv); returns the CLI object."""
    import warnings

    cli_class, pl = _lightning_cli_class()
    with warnings.catch_warnings():
        # main(argv) from Python (tests, notebooks) passes args explicitly; that is intended.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
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
