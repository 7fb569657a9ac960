"""Each fit draws its random numbers from generators of its own.

torch's default generator is one per process: two fits in threads (joblib's
threading backend, a Dask worker's threads) seeding and drawing from it would
draw each other's numbers. :class:`FitRandomness` is a torch function mode,
which acts in the thread that enters it only: while a fit runs, every random
draw that does not name a generator (initialising the new head, shuffling,
picking a view, augmenting, dropout anywhere in the network) takes the fit's
generator for the tensor's device instead. A seeded fit then gives the same
model alone, after other fits, or beside them in threads. A network built
with random weights (``weights=None``) draws from generators of its own
alike (``_builders._seeded``).

Dropout is redrawn here from those generators (torch's fused dropout takes
none): a mask of float32 uniforms (``>= p``), scaled by ``1 / (1 - p)``: the
same distribution, and drawn 2-3x faster on the CPU than torch's
``bernoulli_`` mask (``benchmarks/bench_fit_overheads.py``).
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

# Functions and methods that take ``generator=``: the fit's is added.
_TAKE_GENERATOR = {
    getattr(namespace, name)
    for namespace, names in [
        (torch, "rand randn randint randperm bernoulli normal multinomial poisson"),
        (
            torch.Tensor,
            "uniform_ normal_ bernoulli_ bernoulli random_ exponential_ geometric_ "
            "log_normal_ cauchy_ multinomial",
        ),
        (
            torch.nn.init,
            "uniform_ normal_ trunc_normal_ kaiming_uniform_ kaiming_normal_ "
            "xavier_uniform_ xavier_normal_ orthogonal_ sparse_",
        ),
    ]
    for name in names.split()
}
# ``*_like`` draws, as the factory draw of the same shape (older torch
# releases take no generator there).
_LIKE = {torch.rand_like: torch.rand, torch.randn_like: torch.randn}
# Dropout whose mask is drawn here: ``function -> per-channel mask``.
_DROPOUT = {
    F.dropout: False,
    torch.dropout: False,
    F.dropout1d: True,
    F.dropout2d: True,
    F.dropout3d: True,
}

_active = threading.local()  # this thread's FitRandomness, while a fit runs


class FitRandomness(TorchFunctionMode):
    """Route this thread's random draws to generators seeded by ``seed``
    (one per device, made when first drawn from)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)
        self.generators: dict[torch.device, torch.Generator] = {}
        self.paused = False

    def __enter__(self):
        self._outer = getattr(_active, "mode", None)
        _active.mode = self
        return super().__enter__()

    def __exit__(self, *exc):
        _active.mode = self._outer
        return super().__exit__(*exc)

    def generator(self, device) -> torch.Generator | None:
        device = torch.device(device if device is not None else "cpu")
        if device.type == "meta":
            return None
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device not in self.generators:
            generator = torch.Generator(device=device)
            self.generators[device] = generator.manual_seed(self.seed)
        return self.generators[device]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused:
            return func(*args, **kwargs)
        if func in _TAKE_GENERATOR and kwargs.get("generator") is None:
            kwargs = {**kwargs, "generator": self.generator(_device_of(args, kwargs))}
        elif func in _LIKE:
            like = args[0]
            kwargs = {"dtype": like.dtype, "device": like.device, **kwargs}
            kwargs["generator"] = self.generator(kwargs["device"])
            kwargs.pop("memory_format", None)
            return _LIKE[func](like.shape, **kwargs)
        elif func in _DROPOUT:
            return self._dropout(*args, per_channel=_DROPOUT[func], **kwargs)
        return func(*args, **kwargs)

    def _dropout(self, x, p=0.5, training=True, inplace=False, *, per_channel):
        # torch.dropout(input, p, train) and F.dropout(input, p, training, inplace)
        if not training or p == 0:
            return x
        if p == 1:
            return x.mul_(0) if inplace else x * 0
        shape = (*x.shape[:2], *([1] * (x.ndim - 2))) if per_channel else x.shape
        generator = self.generator(x.device)
        mask = torch.empty(shape, device=x.device).uniform_(generator=generator)
        mask = mask.ge_(p).mul_(1 / (1 - p)).to(x.dtype)
        return x.mul_(mask) if inplace else x * mask


def _device_of(args, kwargs):
    if "device" in kwargs:
        return kwargs["device"]
    first = args[0] if args else None
    return first.device if isinstance(first, torch.Tensor) else None


def seed_for_fit(random_state) -> int:
    """The seed of a fit's generators: ``random_state`` (an int, or a number
    drawn from a ``RandomState``), or, for ``None``, a number drawn from
    torch's default generator (so ``torch.manual_seed`` still decides it)."""
    from numbers import Integral

    from sklearn.utils import check_random_state

    if random_state is None:
        return int(torch.randint(2**62, ()).item())
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


@contextlib.contextmanager
def drawing_globally():
    """Within a fit, draw from torch's default generator again (building a
    network: cached and fresh builds must not differ in what they take
    from the fit's generators)."""
    mode = getattr(_active, "mode", None)
    if mode is None or mode.paused:
        yield
        return
    mode.paused = True
    try:
        yield
    finally:
        mode.paused = False
