"""A network run from a stored activation: the cut after its frozen part.

The modules that run before the first trained one are in eval mode, so
their output for an image is the same in every epoch. A :class:`Cut`
computes it once (its *rows*) and runs the rest of the network from it: for
the length of a call, the skipped modules' ``forward`` returns the rows (the
last of them, the *boundary*) or NaN of their shape (the others). Nothing is
traced: the network's own ``forward`` runs, with its own control flow.

:func:`plan_cut` finds the modules to skip from a probe forward pass and
keeps the cut only if it gives what the whole network gives, in eval mode
and in the training modes: a NaN that leaks, a module that draws random
numbers or trains before the boundary, any error, and the whole network
runs instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from .._devices import autocast
from .._groups import ancestors, is_under
from .._lru import LRU
from .._randomness import FitRandomness
from .._tap import forward_tap
from .fingerprint import neutral_hooks, settings_of, tensor_key

# Images of the probe's passes in training modes (BatchNorm there needs more
# than one) and in eval mode: activations whose first dimension follows both
# are batches (a sequence-first one of length 2 is not).
_PROBE_IMAGES = 2, 3
# Modules without state that compute alike in both modes (dropout does not).
_DETERMINISTIC = tuple(
    getattr(nn, name)
    for name in (
        "ReLU ReLU6 LeakyReLU SiLU GELU Hardswish Hardsigmoid Sigmoid Tanh Identity "
        "Flatten MaxPool2d AvgPool2d AdaptiveAvgPool2d AdaptiveMaxPool2d"
    ).split()
)

_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()


def module_lock(module: nn.Module) -> threading.RLock:
    """The lock of ``module``'s forward passes (a cut replaces ``forward``
    of its skipped modules for all threads)."""
    with _locks_lock:
        return _locks.setdefault(module, threading.RLock())


def _forget_locks() -> None:
    """Fresh locks in a forked child (a DataLoader worker): a lock that a
    thread of the parent held would stay held."""
    global _locks, _locks_lock
    _locks, _locks_lock = weakref.WeakKeyDictionary(), threading.Lock()


os.register_at_fork(after_in_child=_forget_locks)


@dataclass(frozen=True)
class Activation:
    """What a module gives one image: shape, dtype and memory layout."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: torch.memory_format

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Activation:
        nhwc = tensor.ndim == 4 and not tensor.is_contiguous()
        nhwc = nhwc and tensor.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if nhwc else torch.contiguous_format
        return cls(tuple(tensor.shape[1:]), tensor.dtype, layout)


class Cut:
    """``module`` run from the output of its module ``boundary``. ``skipped``:
    the modules that do not run (the boundary last) and what each gives one
    image; ``before``: the other outermost modules that run before the
    boundary; ``input_shape``: of one image."""

    def __init__(self, module, skipped: dict, input_shape: tuple, before=()):
        self.module = module
        self.skipped: dict[str, Activation] = skipped
        self.boundary = next(reversed(skipped))
        self._modules = [module.get_submodule(name) for name in skipped]
        self.input_shape = input_shape
        self.before = tuple(before)

    @property
    def lock(self) -> threading.RLock:
        return module_lock(self.module)

    @property
    def activation(self) -> Activation:
        """What the boundary gives one image: the shape of a row."""
        return self.skipped[self.boundary]

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """The boundary's output for preprocessed images."""
        with self.lock:  # the boundary is the last skipped module
            return forward_tap(self.module, batch, self._modules[-1], take_input=False)

    def __call__(self, rows: torch.Tensor, tap=None, *, take_input=False):
        """The network's output from ``rows`` of the boundary (cast to its
        dtype), or the input/output of module ``tap`` on the way."""
        boundary = self.activation
        rows = rows.to(boundary.dtype).contiguous(memory_format=boundary.layout)
        with self.lock, self._stubbed(rows):
            nan = torch.full((), float("nan"), device=rows.device)
            x = nan.expand(len(rows), *self.input_shape)
            if tap is None:
                return self.module(x)
            return forward_tap(self.module, x, tap, take_input=take_input)

    @contextlib.contextmanager
    def _stubbed(self, rows: torch.Tensor):
        n, device = len(rows), rows.device
        stubs = [_nan_stub(a, n, device) for a in self.skipped.values()]
        stubs[-1] = lambda *args, **kwargs: rows
        saved = [m.__dict__.get("forward") for m in self._modules]
        try:
            for m, stub in zip(self._modules, stubs, strict=True):
                m.__dict__["forward"] = stub
            yield
        finally:
            for m, old in zip(self._modules, saved, strict=True):
                m.__dict__.pop("forward", None)
                if old is not None:
                    m.__dict__["forward"] = old


def _nan_stub(activation: Activation, n: int, device):
    nan = torch.full((), float("nan"), dtype=activation.dtype, device=device)
    return lambda *args, **kwargs: nan.expand(n, *activation.shape)


def plan_cut(
    module: nn.Module,
    crop: int,
    *,
    trained: set[int],
    training_modes,
    main_only: bool = False,
    device: torch.device,
    dtype: torch.dtype | None,
) -> tuple[Cut | None, str]:
    """The cut of ``module`` before the first module whose parameters train
    (``trained``: their ids), or ``None`` and why there is none.

    Skipped are the outermost modules entered before the first trained one
    whose every submodule is in eval mode in ``training_modes()`` and holds
    no trained parameter. The cut is kept if it gives the whole network's
    outputs on random images in eval mode and in the training modes
    (``main_only``: the main output alone; running statistics restored; left
    in eval mode). A plan depends on the network's :func:`structure`, not on
    its weights (a NaN never compares true): another fold's copy shares it.
    """
    with module_lock(module):  # no pass of another thread sees the probe's modes
        key = structure(module, trained, training_modes, crop, device, dtype, main_only)
        plan = _plans.get(key)
        if plan is None:
            cut, why = _probe(
                module, crop, trained, training_modes, main_only, device, dtype
            )
            found = (cut.skipped, cut.input_shape, cut.before) if cut else (None, why)
            _plans.put(key, found)
            return cut, why
    if plan[0] is None:
        return None, plan[1]
    return Cut(module, *plan), ""


_plans: LRU[tuple] = LRU(max_items=64)  # by the structure probed (plan_cut)


def structure(module, trained, training_modes, crop, device, dtype, main_only) -> tuple:
    """All that a plan depends on: per module, its name, class, settings,
    mode in training, and its own tensors' names, shapes, dtypes, whether
    they train and, for tensors of a few values (flags, gates), the values;
    the probe's input size, dtype, device and ``main_only``."""
    training_modes()
    parts = []
    neutral = neutral_hooks(torch.device(device), dtype)
    for name, m in module.named_modules():
        settings = tuple(settings_of(m, neutral, tensor_key))
        own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        tensors = tuple((n, *tensor_key(t), id(t) in trained) for n, t in own)
        parts.append((name, type(m), settings, m.training, tensors))
    module.eval()
    return (tuple(parts), crop, str(device), str(dtype), main_only)


def _probe(module, crop, trained, training_modes, main_only, device, dtype):
    """Probe ``module`` for :func:`plan_cut` (see there)."""
    n, n_eval = _PROBE_IMAGES
    seeded = torch.Generator().manual_seed(0)
    x_eval = torch.randn(n_eval, 3, crop, crop, generator=seeded)
    x_eval = x_eval.to(device).contiguous(memory_format=torch.channels_last)
    x = x_eval[:n]
    buffers = {name: b.clone() for name, b in module.named_buffers()}

    def restore():  # running statistics, as they were
        for name, value in module.named_buffers():
            value.copy_(buffers[name])

    try:  # its own random numbers: the fit's are not drawn from
        with torch.no_grad(), autocast(device, dtype):
            training_modes()
            entered: list[str] = []

            def enter(name, sub):  # the order in which modules are entered
                return sub.register_forward_pre_hook(lambda *_: entered.append(name))

            with FitRandomness(0):
                trained_whole = _hooked(module, x, enter)
            restore()
            names, why = _skippable(module, entered, trained)
            if not names:
                return None, why
            module.eval()
            skipped, rows, whole = _eval_pass(module, x_eval, names)
            if not skipped:
                return None, "the first fixed module gives no batch, or runs twice"
            before = _before(entered, list(skipped))
            cut = Cut(module, skipped, tuple(x.shape[1:]), before)
            if not _same(whole, cut(rows)):
                return None, "the rest of the network needs more than the cut"
            training_modes()
            with FitRandomness(0):
                from_rows = cut(rows[:n])
            if main_only:
                trained_whole = _tensors(trained_whole)[:1]
                from_rows = _tensors(from_rows)[:1]
            if not _same(trained_whole, from_rows):
                return None, "what runs before the cut differs in training"
            return cut, ""
    except Exception as exc:  # a forward that the stubs upset: run it whole
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        with torch.no_grad():
            restore()
        module.eval()


def _hooked(module: nn.Module, x, hook):
    """``module(x)`` with ``hook(name, submodule)`` (a hook's handle, or
    ``None``) applied to every submodule."""
    handles = [hook(name, sub) for name, sub in module.named_modules() if name]
    try:
        return module(x)
    finally:
        for handle in handles:
            if handle is not None:
                handle.remove()


def _skippable(module: nn.Module, entered: list[str], trained: set[int]):
    """The outermost of the modules ``entered`` before the first one with a
    trained parameter of its own, whose every submodule is in eval mode (or
    computes alike in both) and holds no trained parameter; or ``[]`` and
    why there are none."""
    modules = dict(module.named_modules())

    def trains(sub: nn.Module, recurse: bool) -> bool:
        return any(id(p) in trained for p in sub.parameters(recurse=recurse))

    outermost: list[str] = []
    for name in entered:
        sub = modules[name]
        if trains(sub, recurse=False):
            break
        fixed = not trains(sub, True) and all(
            not m.training or isinstance(m, _DETERMINISTIC) for m in sub.modules()
        )
        if fixed and not is_under(name, outermost):
            outermost.append(name)
    for name in outermost:  # code around them that trains parameters
        around = [modules[a] for a in ancestors(name)]
        if any(trains(a, recurse=False) for a in around):
            return [], f"{type(around[-1]).__name__} trains parameters of its own"
    if not outermost:
        return [], "no module runs before the first trained one"
    return outermost, ""


def _before(entered: list[str], skipped: list[str]) -> list[str]:
    """The outermost modules entered before the boundary that are neither
    skipped nor ancestors of a skipped one: their state keys its rows."""
    around = {a for name in skipped for a in ancestors(name)}
    before: list[str] = []
    for name in entered[: entered.index(skipped[-1])]:
        if not (name in around or is_under(name, [*before, *skipped])):
            before.append(name)
    return before


def _eval_pass(module: nn.Module, x, names: list[str]):
    """One forward pass of ``x`` in eval mode: what each of ``names`` gives
    one image, up to the first that is not called exactly once or gives no
    batch; the boundary's (the last's) output; the network's."""
    found: dict[str, list] = {name: [] for name in names}

    def record(name, sub):
        if name in found:
            return sub.register_forward_hook(lambda m, a, out: found[name].append(out))
        return None

    whole = _hooked(module, x, record)
    skipped = {}
    for name, outputs in found.items():
        out = outputs[0] if len(outputs) == 1 else None
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or len(out) != len(x):
            break  # the cut ends before it
        skipped[name] = Activation.of(out)
    rows = found[next(reversed(skipped))][0] if skipped else None
    return skipped, rows, whole


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _tensors(item)]
    return []


def _same(a, b) -> bool:
    """Whether two outputs hold the same finite tensors (close: CUDA kernels
    may pick other algorithms between calls)."""
    a, b = _tensors(a), _tensors(b)
    if not a or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape or not torch.isfinite(y).all():
            return False
        x, y = x.float(), y.float()
        scale = float(x.abs().max()) if x.numel() else 0.0
        if not torch.allclose(x, y, rtol=1e-3, atol=1e-4 * max(scale, 1.0)):
            return False
    return True
