"""Kernel objects that pick the Triton compiler or the Triton interpreter per launch.

Why not plain ``@triton.jit``: that decorator decides between compiler and interpreter once, at
import time, from ``TRITON_INTERPRET``. In one pytest process another test module may import
these kernels before any test sets the variable, and then CPU tensors would reach compiled
kernels and fail. Here the choice is made at launch from the tensors' device: CUDA tensors run
compiled kernels, CPU tensors run the interpreter (whatever ``TRITON_INTERPRET`` says). So
``backend="triton"`` works on CPU tensors in any import order, which is how CI tests the kernels.

The interpreter needs one more thing: triton's own library functions (``tl.sum``, ``tl.max``,
``tl.cumsum`` ...) are themselves jit functions, built as compiled-kernel objects when triton was
imported without ``TRITON_INTERPRET=1``, and those refuse to be called from interpreted code.
So an interpreted launch temporarily sets ``TRITON_INTERPRET=1`` and routes such calls through
``InterpretedFunction`` (a no-op when triton was imported in interpreter mode).

Only launched kernels use :func:`kernel`; device helpers they call are plain ``@triton.jit``
functions (routed like the library functions above when interpreted). Inside kernels, shapes
(``tl.arange``, ``tl.reshape``) take constexpr parameters or inline constexpr expressions only:
a plain assignment turns a constant into a tensor, both in the compiler and the interpreter.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import torch


class LazyKernel:
    """A kernel source function, jitted on first use for the device of its tensor arguments."""

    def __init__(self, fn: Callable[..., Any], do_not_specialize: tuple[str, ...] = ()):
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.do_not_specialize = tuple(do_not_specialize)
        self._variants: dict[bool, Any] = {}

    def variant(self, interpret: bool):
        if interpret not in self._variants:
            if interpret:
                from triton.runtime.interpreter import InterpretedFunction

                self._variants[interpret] = InterpretedFunction(self.fn)
            else:
                from triton.runtime.jit import JITFunction

                self._variants[interpret] = JITFunction(self.fn, do_not_specialize=self.do_not_specialize)
        return self._variants[interpret]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            on_cpu = any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in args)
            if not (on_cpu or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")):
                return self.variant(False)[grid](*args, **kwargs)
            with _interpreter_mode():
                return self.variant(True)[grid](*args, **kwargs)

        return launch


_INTERPRETED: dict[Any, Any] = {}


@contextlib.contextmanager
def _interpreter_mode():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    def device_call(self, *args, **kwargs):
        if self.fn not in _INTERPRETED:
            _INTERPRETED[self.fn] = InterpretedFunction(self.fn)
        return _INTERPRETED[self.fn](*args, **kwargs)

    saved_env = os.environ.get("TRITON_INTERPRET")
    saved_call = JITFunction.__call__
    os.environ["TRITON_INTERPRET"] = "1"
    JITFunction.__call__ = device_call
    try:
        yield
    finally:
        JITFunction.__call__ = saved_call
        if saved_env is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved_env


def kernel(fn: Callable[..., Any] | None = None, *, do_not_specialize: tuple[str, ...] = ()):
    """Decorator: like ``triton.jit`` but compiled or interpreted per launch (see module doc).

    `do_not_specialize` names integer arguments the compiled variant must not specialise on
    (Triton otherwise compiles again for each pattern of values equal to 1 or divisible by 16):
    for scalars that change every call, e.g. with an annealed budget.
    """
    if fn is None:
        return lambda f: LazyKernel(f, do_not_specialize)
    return LazyKernel(fn, do_not_specialize)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for launch grids, in plain Python (triton.cdiv is a constexpr function: ~5 µs a
    call from the host)."""
    return -(-a // b)
