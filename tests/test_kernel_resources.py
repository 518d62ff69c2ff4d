"""benchmarks/kernel_resources.py: launches recorded on meta tensors compile for sm_90 and parse."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
from triton import knobs


def _has_ptxas():
    try:
        return bool(knobs.nvidia.ptxas.path)
    except RuntimeError:
        return False


pytestmark = pytest.mark.skipif(not _has_ptxas(), reason="triton's ptxas is not available")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_resources.py"


CHECK = f"""
import importlib.util
from triton import knobs
spec = importlib.util.spec_from_file_location("kernel_resources", {str(SCRIPT)!r})
kr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kr)
launches = kr.record_launches(1, 2, 1000, 64, 128, 64)
names = [lazy.__name__ for lazy, _, _ in launches]
for fn in kr.ATTENTION_KERNELS:
    assert names.count(fn.__name__) == 1, names
# the small delta kernel keeps this quick; the attention kernels go through the same path
lazy, args, kwargs = next(x for x in launches if x[0].__name__ == "_delta_kernel")
compiled, consts = kr.compile_launch(lazy, args, kwargs)
assert consts["HEAD_DIM"] == 64
regs, stores, loads, stack = kr.ptxas_usage(knobs.nvidia.ptxas.path, compiled.asm["ptx"], compiled.metadata.name)
assert 0 < regs <= 255 and min(stores, loads, stack) >= 0
"""


def test_records_attention_launches_and_reads_ptxas():
    # a fresh interpreter: Triton's interpreter, used by other tests in this process, patches
    # triton.language globally, which breaks compiling
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


GLUON_CHECK = f"""
import importlib.util
from triton import knobs
spec = importlib.util.spec_from_file_location("kernel_resources", {str(SCRIPT)!r})
kr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kr)
launches = kr.record_gluon_launches(1, 2, 1000, 64, 128, 64)
assert sorted(kr.kernel_name(k) for k, _, _ in launches) == ["_block_sums_kernel", "_dkdv_kernel", "_dq1_kernel",
                                                              "_fwd_kernel", "_pool_kernel", "_pooled_dq_kernel"]
for name, warps, max_regs in (("_dq1_kernel", 12, 168), ("_fwd_kernel", 12, 168), ("_pool_kernel", 4, 128)):
    kernel, args, kwargs = next(x for x in launches if kr.kernel_name(x[0]) == name)
    compiled, consts = kr.compile_launch(kernel, args, kwargs)
    assert compiled.metadata.num_warps == warps, name  # 12: a producer and two consumer warpgroups
    regs, stores, loads, stack = kr.ptxas_usage(knobs.nvidia.ptxas.path, compiled.asm["ptx"], compiled.metadata.name)
    assert regs <= max_regs and stores == loads == 0, (name, regs, stores, loads)
"""


def test_gluon_kernels_compile_for_sm90_without_spills():
    """The level-1 dQ kernel (gluon_backward), the forward (gluon_forward) and the scores' pooling
    (gluon_block_scores) build for an H100/H200 with their register plans intact (the consumers'
    accumulators, the pooling's rows fit without spilling), on a machine without a GPU."""
    from psa_train.kernels.gluon_support import HAVE_GLUON

    if not HAVE_GLUON:
        pytest.skip("this Triton has no Gluon of a tested version")
    result = subprocess.run([sys.executable, "-c", GLUON_CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
