"""Patching with exact inverses: attach a diffusers hook, swap a submodule, set an instance attribute. Every
function here makes one change and appends its inverse to `undo`."""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook


def attach_hook(module: torch.nn.Module, hook: ModelHook, undo: list, name: str) -> None:
    """Registers `hook` under `name` and appends its exact inverse to `undo` (the module's attributes as before)."""
    had_registry = hasattr(module, "_diffusers_hook")
    had_forward = "forward" in module.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, name)

    def detach():
        registry.remove_hook(name, recurse=False)
        if not registry.hooks:
            if not had_forward:
                module.__dict__.pop("forward", None)
            if not had_registry:
                del module._diffusers_hook

    undo.append(detach)


def has_hook(module: torch.nn.Module, name: str) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(name) is not None


def set_instance_attr(obj, name: str, value, undo: list) -> None:
    """Sets `obj.<name>` on the instance and appends the exact inverse to `undo`: the instance's own
    earlier value put back, or the attribute removed so the class's shows through again."""
    had_attr, before = name in vars(obj), vars(obj).get(name)
    setattr(obj, name, value)

    def restore():
        if had_attr:
            setattr(obj, name, before)
        else:
            delattr(obj, name)

    undo.append(restore)


def swap_in(root: torch.nn.Module, name: str, wrapper: torch.nn.Module, undo: list) -> None:
    """Replaces the submodule `name` of `root` by `wrapper` and appends the exact inverse to `undo`."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name)
    original = parent._modules[attr]
    setattr(parent, attr, wrapper)
    undo.append(lambda: setattr(parent, attr, original))
