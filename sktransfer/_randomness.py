"""Each fit draws its random numbers from generators of its own.

torch's default generator is one per process: fits in threads (joblib's
threading backend, a Dask worker's threads) would draw each other's numbers.
:class:`FitRandomness`, a torch function mode, acts in the thread that
enters it: every draw that names no generator (the new head's weights,
shuffling, views, augmentation, dropout) takes the fit's generator for the
tensor's device. A seeded fit then gives the same model alone, after other
fits, or beside them in threads; seeded builds (``weights=None``) do alike
(``_builders._seeded``). Dropout is redrawn from those generators (torch's
fused dropout takes none) as a mask of float32 uniforms ``>= p`` scaled by
``1 / (1 - p)``: the same distribution, 2-3x faster on the CPU than torch's
``bernoulli_`` mask (``benchmarks/bench_fit_overheads.py``).
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings

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
# Dropout whose mask is drawn here: ``function -> (per-channel mask, alpha)``;
# alpha dropout (self-normalising networks) keeps mean and variance.
_DROPOUT = {
    **dict.fromkeys([F.dropout, torch.dropout], (False, False)),
    **dict.fromkeys([F.dropout1d, F.dropout2d, F.dropout3d], (True, False)),
    **dict.fromkeys([F.alpha_dropout, torch.alpha_dropout], (False, True)),
    **dict.fromkeys(
        [F.feature_alpha_dropout, torch.feature_alpha_dropout], (True, True)
    ),
}
_SELU_SATURATION = 1.7580993408473766  # SELU's scale * alpha, as torch's
# Functions that draw their dropout where no mode reaches: the positions of
# their dropout probability and ``training`` argument. A fit that drops out
# through them warns: it is reproducible alone, not beside fits in threads.
_UNREACHED = {
    F.scaled_dot_product_attention: (4, None),
    F.multi_head_attention_forward: (10, 13),
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
        self.warned = False

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
            self.generators[device] = torch.Generator(device).manual_seed(self.seed)
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
            per_channel, alpha = _DROPOUT[func]
            return self._dropout(*args, per_channel=per_channel, alpha=alpha, **kwargs)
        elif func is F.rrelu:
            return self._rrelu(*args, **kwargs)
        elif func in _UNREACHED and not self.warned and _drops(func, args, kwargs):
            self.warned = True
            warnings.warn(
                f"{func.__name__} draws its dropout from torch's process-wide "
                "generator, which the fit's own generators cannot replace: this "
                "fit is reproducible alone, not beside other fits in threads.",
                UserWarning,
                stacklevel=2,
            )
        return func(*args, **kwargs)

    def _dropout(self, x, p=0.5, training=True, inplace=False, *, per_channel, alpha):
        # torch.dropout(input, p, train) and F.dropout(input, p, training, inplace)
        if not training or p == 0:
            return x
        if p == 1:  # as torch: zeros, alpha dropout too
            return x.mul_(0) if inplace else x * 0
        shape = (*x.shape[:2], *([1] * (x.ndim - 2))) if per_channel else x.shape
        generator = self.generator(x.device)
        mask = torch.empty(shape, device=x.device).uniform_(generator=generator)
        keep = mask.ge_(p)
        if not alpha:
            mask = keep.mul_(1 / (1 - p)).to(x.dtype)
            return x.mul_(mask) if inplace else x * mask
        # dropped units take SELU's saturation value; a and b keep the moments
        a = 1 / math.sqrt((_SELU_SATURATION**2 * p + 1) * (1 - p))
        b = (keep - 1).mul_(_SELU_SATURATION * a).add_(_SELU_SATURATION * a * p)
        scale = keep.mul_(a).to(x.dtype)
        return x.mul_(scale).add_(b) if inplace else x * scale + b.to(x.dtype)

    def _rrelu(self, x, lower=1 / 8, upper=1 / 3, training=False, inplace=False):
        generator = self.generator(x.device)
        rrelu = torch.rrelu_ if inplace else torch.rrelu
        return rrelu(x, lower, upper, training, generator=generator)


def _drops(func, args, kwargs) -> bool:
    """Whether a call of a function of :data:`_UNREACHED` drops out."""
    p_at, training_at = _UNREACHED[func]
    p = args[p_at] if len(args) > p_at else kwargs.get("dropout_p", 0.0)
    training = training_at is None or (
        args[training_at] if len(args) > training_at else kwargs.get("training", True)
    )
    return bool(p) and bool(training)


def _device_of(args, kwargs):
    first = args[0] if args else None
    return kwargs.get("device", first.device if torch.is_tensor(first) else None)


def seed_for_fit(random_state) -> int:
    """The seed of a fit's generators: ``random_state`` (an int, or drawn from
    a ``RandomState``); for ``None``, drawn from torch's default generator
    (so ``torch.manual_seed`` still decides it)."""
    from numbers import Integral

    from sklearn.utils import check_random_state

    if random_state is None:
        return int(torch.randint(2**62, ()).item())
    if isinstance(random_state, Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))


@contextlib.contextmanager
def drawing_globally():
    """Within a fit, draw from torch's default generator again: a build, cached
    or fresh, takes nothing from the fit's generators."""
    mode = getattr(_active, "mode", None)
    if mode is None or mode.paused:
        yield
        return
    mode.paused = True
    try:
        yield
    finally:
        mode.paused = False
