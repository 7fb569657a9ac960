"""FineTuneClassifier on any device: ``device="auto"``, mixed precision,
moving a fitted network between devices, and pickles that load without a GPU."""

from __future__ import annotations

import contextlib

import torch
from skorch.utils import TeeGenerator

from .._devices import autocast_dtype, is_auto, resolve_device


class DeviceMixin:
    """skorch overrides about devices and precision (mixed into FineTuneNet)."""

    def initialize(self):
        """skorch's ``initialize`` (``device="auto"`` resolved); needs ``classes_``."""
        with self._resolved_device():
            return super().initialize()

    def _device(self) -> torch.device:
        return resolve_device(self.device)

    def _autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The network's autocast dtype (training and predictions alike)."""
        return autocast_dtype(
            self.precision, device, training=True, network=self.__dict__.get("module_")
        )

    def _grad_scaler(self):
        """A gradient scaler for float16 training (bfloat16 and float32 need none)."""
        device = self._device()
        if self._autocast_dtype(device) != torch.float16:
            return None
        if "grad_scaler_" not in self.__dict__:
            self.grad_scaler_ = torch.amp.GradScaler(device.type)
        return self.grad_scaler_

    def train_step(self, batch, **fit_params):
        """skorch's step; with float16 autocast, a gradient-scaled one (its
        step takes no closure): gradients are unscaled before callbacks see
        them (skorch's documented override)."""
        scaler = self._grad_scaler()
        if scaler is None:
            return super().train_step(batch, **fit_params)
        self.optimizer_.zero_grad()
        step = self.train_step_single(batch, **fit_params)
        scaler.unscale_(self.optimizer_)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        scaler.step(self.optimizer_)
        scaler.update()
        return step

    @contextlib.contextmanager
    def _resolved_device(self):
        """``device="auto"`` as a concrete device while skorch runs."""
        raw = self.__dict__.get("device")
        if not is_auto(raw):
            yield
            return
        self.__dict__["device"] = str(resolve_device("auto"))
        try:
            yield
        finally:
            self.__dict__["device"] = raw

    def set_params(self, **kwargs):
        """skorch's ``set_params``; a new ``device`` moves a fitted network there
        (e.g. fitted on a GPU, then ``set_params(device="cpu")`` to predict)."""
        super().set_params(**kwargs)
        if "device" in kwargs and getattr(self, "initialized_", False):
            self._move_to(self._device())
        return self

    def _move_to(self, device: torch.device) -> None:
        for name in ("module_", "criterion_"):
            component = self.__dict__.get(name)
            if isinstance(component, torch.nn.Module):
                component.to(device)
        if device.type == "cuda" and "module_" in self.__dict__:
            self.module_.to(memory_format=torch.channels_last)
        optimizer = self.__dict__.get("optimizer_")
        for state in getattr(optimizer, "state", {}).values():
            for key, value in state.items():
                # moments move; a scalar step counter stays on the CPU unless
                # it lives beside the weights (fused / capturable optimizers)
                if isinstance(value, torch.Tensor) and (
                    value.ndim > 0 or value.device.type != "cpu"
                ):
                    state[key] = value.to(device)
        self.__dict__.pop("grad_scaler_", None)

    def __getstate__(self):
        # Not kept: the device-bound gradient scaler (made again when training
        # resumes), this process's modes and cuts, and a fit's data.
        state = super().__getstate__()
        for key in ("grad_scaler_", "_modes", "_cuts", "_fit_data"):
            state.pop(key, None)
        return state

    def load_params(self, *args, **kwargs):
        with self._resolved_device():
            return super().load_params(*args, **kwargs)

    def __setstate__(self, state):
        # A net fitted on a GPU with device="auto" loads on a CPU-only machine.
        raw = state.get("device")
        auto = is_auto(raw)
        if auto:
            state["device"] = str(resolve_device("auto"))
        super().__setstate__(state)
        if auto:
            self.__dict__["device"] = raw
