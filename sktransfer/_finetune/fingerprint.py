"""What keys a shared plan (:mod:`.cut`) or stored rows (:mod:`.rows`): a
module's settings, classes and code as values that compare equal exactly
when they compute alike, across networks and processes.

:func:`fingerprint` gives a setting's comparable value: numbers and strings
as they are, containers by their items, tensors and arrays by their bytes,
classes and functions by their code, defaults, closures and attributes
(:func:`class_digest`). What cannot be compared is :class:`Opaque`, known
by its identity alone: plans take it by identity, and no rows are stored
for a network that holds one (it may change in place unseen).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import inspect
import threading
import types
import weakref

import numpy as np
import torch
from torch import nn

from .._devices import CPU_AUTOCAST_HOOKS
from .._tap import OUTPUT_NEUTRAL_HOOKS
from .data import gradient_as_input

_ROUTING_VALUES = 8  # tensors of at most this many values key plans by them


def tensor_key(t: torch.Tensor) -> tuple:
    values = None
    if t.numel() <= _ROUTING_VALUES:
        try:
            values = tuple(t.detach().flatten().tolist())
        except (RuntimeError, TypeError, NotImplementedError):  # quantized, meta
            values = _tensor_fingerprint(t)
    return tuple(t.shape), str(t.dtype), values


def neutral_hooks(device: torch.device, dtype: torch.dtype | None) -> tuple:
    """Forward hooks that change no output on ``device`` under autocast to
    ``dtype``: sktransfer's taps, the layout of pooled gradients, and the
    float32 steps of grouped convolutions outside CPU autocast."""
    neutral = (*OUTPUT_NEUTRAL_HOOKS, gradient_as_input)
    if device.type == "cpu" and dtype is not None:
        return neutral
    return (*neutral, *CPU_AUTOCAST_HOOKS)


def settings_of(
    module: nn.Module, neutral: tuple = OUTPUT_NEUTRAL_HOOKS, tensor=None
) -> list:
    """``module``'s own state but submodules, parameters and buffers, as
    ``(name, comparable value)``: every attribute (tensors by ``tensor(t)``,
    else by their bytes) and its forward hooks but the ``neutral`` ones
    (:func:`neutral_hooks`), all of which can change what ``forward`` does.
    A value that cannot be compared across networks (an object of a class
    of its own) is :class:`Opaque`: plans take it by identity, and no rows
    are stored for a network holding one (it may change in place unseen)."""
    tensor = tensor or fingerprint
    settings = [
        (k, tensor(v) if isinstance(v, torch.Tensor) else fingerprint(v))
        for k, v in sorted(vars(module).items())
        if k not in _MODULE_STATE
    ]
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    hooks = [fingerprint(h) for h in hooks if h not in neutral]
    return [*settings, ("forward hooks", tuple(hooks))] if hooks else settings


# What every nn.Module holds (its modes, tensors, submodules, hooks), and the
# flag of sktransfer's tap hooks, which change no output.
_MODULE_STATE = {*vars(nn.Module()), "_sktransfer_tap_hooks"}


class Opaque:
    """A setting known by its identity alone (:func:`settings_of`), equal
    only to itself: held weakly where it can be (a plan's key keeps no
    network alive; a dead reference equals no other), else held."""

    def __init__(self, value):
        try:
            self.ref = weakref.ref(value)  # the value's one reference, while alive
        except TypeError:
            self.ref = value

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.ref is self.ref

    def __hash__(self):
        return id(self.ref)

    def __repr__(self):  # the order of a set's items (fingerprint)
        return f"Opaque({id(self.ref):#x})"


def fingerprint(value):
    """``value`` as something equal across networks exactly when the values
    are the same settings (see :func:`settings_of`)."""
    if value is None or isinstance(value, (bool, int, float, complex, str)):
        return value
    seen = _in_progress.__dict__.setdefault("ids", set())
    if id(value) in seen:  # a setting that holds itself
        return ("cycle",)
    seen.add(id(value))
    try:
        return _fingerprint(value)
    finally:
        seen.discard(id(value))


_in_progress = threading.local()


def _fingerprint(value):
    if isinstance(value, (torch.dtype, torch.device, enum.Enum, range, slice)):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", hashlib.sha256(value).hexdigest())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *(fingerprint(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", *sorted(map(fingerprint, value), key=repr))
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: repr(item[0]))
        return ("dict", *((fingerprint(k), fingerprint(v)) for k, v in items))
    if isinstance(value, functools.partial):
        return ("partial", *map(fingerprint, (value.func, value.args, value.keywords)))
    if isinstance(value, torch.Tensor):
        return _tensor_fingerprint(value)
    if isinstance(value, np.ma.MaskedArray):  # its mask too
        return ("masked", fingerprint((value.data, np.ma.getmaskarray(value))))
    if isinstance(value, (np.ndarray, np.generic)) and not value.dtype.hasobject:
        array = np.ascontiguousarray(value)
        digest = hashlib.sha256(array.view(np.uint8).reshape(-1)).hexdigest()
        return ("array", array.shape, str(array.dtype), digest)
    if isinstance(value, type):
        name = f"{getattr(value, '__module__', '')}.{value.__qualname__}"
        return ("class", name, class_digest(value))
    if isinstance(value, types.FunctionType):
        return _function_fingerprint(value)
    return Opaque(value)


def _tensor_fingerprint(t: torch.Tensor):
    """By its bytes (bfloat16, views, sparse and quantized tensors too)."""
    try:
        data = t.detach().resolve_conj().resolve_neg()
        data = data.to_dense() if data.layout != torch.strided else data
        data = data.int_repr() if data.is_quantized else data
        raw = data.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    except (RuntimeError, TypeError, NotImplementedError):  # meta, nested
        return Opaque(t)
    digest = hashlib.sha256(raw).hexdigest()
    return ("tensor", tuple(t.shape), str(t.dtype), digest)


def _function_fingerprint(function: types.FunctionType):
    """Its code, defaults and the values it closes over (a decorated function
    by the one it wraps)."""
    try:
        function = inspect.unwrap(function)
    except ValueError:  # a cycle of wrappers
        return Opaque(function)
    if not isinstance(function, types.FunctionType):
        return fingerprint(function)
    code, cells = function.__code__, []
    for name, cell in zip(code.co_freevars, function.__closure__ or (), strict=True):
        if name != "__class__":  # super()'s: the class being digested
            try:
                cells.append((name, fingerprint(cell.cell_contents)))
            except ValueError:  # not yet filled
                cells.append((name, None))
    name = f"{function.__module__}.{function.__qualname__}"
    defaults = fingerprint((function.__defaults__, function.__kwdefaults__))
    return ("function", name, _code_digest(code), defaults, tuple(cells))


def is_opaque(fingerprint) -> bool:
    """Whether a fingerprint holds an :class:`Opaque` value."""
    if isinstance(fingerprint, Opaque):
        return True
    return isinstance(fingerprint, tuple) and any(map(is_opaque, fingerprint))


def class_digest(cls: type):
    """A digest of ``cls`` and its bases but torch's own (torch's version
    keys those): their functions' code, defaults and closures, and their
    other attributes (:func:`fingerprint`), so that a class defined again
    with another ``forward`` or constant (a notebook cell run again, an
    edited script) is another class, in this process or the next; made
    again when a member is replaced. :class:`Opaque` where a member is."""
    bases = [
        k
        for k in cls.__mro__
        if str(getattr(k, "__module__", "")).split(".")[0] not in _OWN_CODE
    ]
    members = [(k, name, v) for k in bases for name, v in sorted(vars(k).items())]
    try:
        known = _class_digests.get(cls)
    except TypeError:  # a metaclass's __eq__ without __hash__: not kept
        known = None
    same = known is not None and len(known[0]) == len(members)
    if same and all(a is b for a, (_, _, b) in zip(known[0], members, strict=True)):
        return known[1]  # the same members (kept: no id of theirs reused)
    parts = []
    for klass, name, member in members:
        part = _member_fingerprint(name, member)
        if part is not None:
            parts.append((klass.__qualname__, name, part))
    if is_opaque(tuple(parts)):
        return Opaque(cls)  # not kept: it would hold its key
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()
    with contextlib.suppress(TypeError):
        _class_digests[cls] = (tuple(v for _, _, v in members), digest)
    return digest


_OWN_CODE = {"torch", "builtins"}  # keyed by torch's version
_class_digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _member_fingerprint(name: str, member):
    """A class member's part of :func:`class_digest`: ``None`` for what
    computes nothing (documentation, annotations, caches of ``abc``)."""
    if isinstance(member, (staticmethod, classmethod)):
        member = member.__func__
    elif isinstance(member, property):
        member = (member.fget, member.fset, member.fdel)
    elif isinstance(member, functools.cached_property):
        member = member.func
    elif isinstance(member, functools.partialmethod):
        member = (member.func, member.args, member.keywords)
    dunder = name.startswith("__") and name.endswith("__")
    if isinstance(member, _C_MEMBERS) or name == "_abc_impl":
        return type(member).__name__
    if dunder and not isinstance(member, (types.FunctionType, tuple)):
        return None
    return fingerprint(member)


_C_MEMBERS = (
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.BuiltinFunctionType,
)


def _code_digest(code: types.CodeType) -> str:
    """Bytecode, names and constants (nested code too), alike in every process."""
    digest = hashlib.blake2b(code.co_code, digest_size=8)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            const = _code_digest(const)
        elif isinstance(const, frozenset):  # its order follows string hashing
            const = sorted(map(repr, const))
        digest.update(repr(const).encode())
    return digest.hexdigest()
