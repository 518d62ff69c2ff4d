"""The installed layout of DESIGN.md §2 and the console script."""

import pathlib
import subprocess
import sys
import tomllib

import psa_train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_source_package_is_installed():
    """A new subpackage that pyproject does not list would be missing from the wheel."""
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    package_dir = setuptools_cfg["package-dir"]
    listed = set(setuptools_cfg["packages"])
    found = set()
    for package, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join((package, *relative.parts)))
    assert found == listed


def test_top_level_folders_install_under_psa_train():
    import psa_train.callbacks
    import psa_train.data
    import psa_train.kernels

    assert pathlib.Path(psa_train.kernels.__file__).parent == ROOT / "kernels"
    assert pathlib.Path(psa_train.data.__file__).parent == ROOT / "data"
    assert pathlib.Path(psa_train.callbacks.__file__).parent == ROOT / "callbacks"


def test_console_script_version_and_help():
    version = subprocess.run(
        [sys.executable, "-m", "psa_train.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"psa-train {psa_train.__version__}"
    assert _pyproject()["project"]["version"] == psa_train.__version__
    helped = subprocess.run(
        [sys.executable, "-m", "psa_train.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: psa-train" in helped.stdout


def test_constraints_pin_the_cpu_torch_and_no_torchvision():
    pins = (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins
    assert not any(line.startswith(("torchvision", "timm", "nvidia-")) for line in pins)
