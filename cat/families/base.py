"""The `Family` record and its registry."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

# Kinds of modules a method patches (keys of `Family.modules`).
ATTENTION = "attention"  # attentions whose image rows the token engine prunes (its processors replace theirs)
FEED_FORWARD = "feed_forward"  # token-wise modules of the image stream the token engine prunes
JOINT = "joint"  # token-wise modules over a [text, image] sequence (FLUX single-stream blocks)
STEP_CACHED = "step_cached"  # modules whose outputs FORA and ToCa cache between steps
FORECAST = "forecast"  # modules whose outputs TaylorSeer forecasts


@dataclass(frozen=True)
class Family:
    """What the methods need to know about one family of diffusers transformers.

    Attributes:
        name: family name (as `family:` in conf/model/*.yaml), used in messages.
        transformer_classes: names of the diffusers transformer classes of the family.
        architecture: the authors' code a method's `authors(family, n)` follows for this family: "mmdit"
            (the MMDiT / FLUX code) or "pixart" (the PixArt code, or the nearest the authors have).
        blocks: the transformer's attributes holding its stacked blocks, in call order.
        modules: kind (ATTENTION, FEED_FORWARD, ...) -> regular expressions of qualified module names
            (`re.fullmatch`); a kind the family lacks is a method that does not support it.
        attention_processor: the diffusers processor class the pruned attentions must carry (the token
            engine adapts that one), and `processor_hint`: what to do when another one is found.
        grid: (transformer, args, kwargs) -> (h, w) token grid of this call's input.
        to_tokens: (transformer, output sample) -> [B, N, D] output tokens.
        from_tokens: (transformer, tokens, output sample) -> output sample.
        token_patch: (transformer config dict) -> latent pixels per token side (the patch size; FLUX's
            pipeline packs 2x2 latents into one token).
        example_inputs: (transformer, batch, latent height, latent width, text tokens, generator) -> the
            keyword inputs of one denoising call as the family's pipeline makes them; random from the
            generator, or shapes only on `meta` when the transformer is on `meta`.
        check: (transformer, method) -> None; raises on a configuration the token engine cannot prune.
        row_norms: (transformer) -> [(qualified name, norm, consumers)]: token-wise norms of the image
            stream whose output reaches only the pruned modules `consumers` (through per-sample
            modulation at most), so a pruned step may normalise the selected rows only.
        cache_dtypes: whether the token engine may store this family's caches in another dtype.
    """

    name: str
    transformer_classes: tuple[str, ...]
    architecture: str
    blocks: tuple[str, ...]
    modules: dict[str, tuple[str, ...]]
    attention_processor: type
    processor_hint: str
    grid: Callable[[torch.nn.Module, tuple, dict], tuple[int, int]]
    to_tokens: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    from_tokens: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    token_patch: Callable[[dict], int]
    example_inputs: Callable[..., dict[str, Any]]
    check: Callable[[torch.nn.Module, str], None] = lambda transformer, method: None
    row_norms: Callable[[torch.nn.Module], list[tuple[str, torch.nn.Module, tuple[str, ...]]]] = field(
        default=lambda transformer: [])
    cache_dtypes: bool = True

    def find(self, transformer: torch.nn.Module, kind: str) -> list[tuple[str, torch.nn.Module]]:
        """[(qualified name, module)] of the modules of `kind` in model order ([] when the family has none)."""
        return find_modules(transformer, self.modules.get(kind, ()))


_REGISTRY: dict[str, Family] = {}
# family name -> the authors' code its methods' `authors()` settings follow (`Family.architecture`)
ARCHITECTURES: dict[str, str] = {}


def register(family: Family) -> Family:
    for cls in family.transformer_classes:
        _REGISTRY[cls] = family
    ARCHITECTURES[family.name] = family.architecture
    return family


def supported_models(kind: str | None = None) -> tuple[str, ...]:
    """The supported transformer classes (of the families that have modules of `kind`, when given)."""
    return tuple(sorted(c for c, f in _REGISTRY.items() if kind is None or kind in f.modules))


def family_names() -> tuple[str, ...]:
    """The names of the registered families (as `family:` in conf/model/*.yaml)."""
    return tuple(sorted({f.name for f in _REGISTRY.values()}))


def family_of_class(class_name: str) -> Family | None:
    return _REGISTRY.get(class_name)


def family_for(transformer: torch.nn.Module, method: str = "CAT", kind: str | None = None) -> Family:
    """The family of `transformer` (its class or a base class); TypeError naming the supported classes
    when there is none, or when `kind` is given and the family has no modules of that kind."""
    for cls in type(transformer).__mro__:
        family = _REGISTRY.get(cls.__name__)
        if family is not None and (kind is None or kind in family.modules):
            return family
    raise TypeError(f"{method} does not support {type(transformer).__name__}; supported transformer classes: "
                    f"{', '.join(supported_models(kind))}.")


def find_modules(transformer: torch.nn.Module, patterns) -> list[tuple[str, torch.nn.Module]]:
    """[(qualified name, module)] of the modules whose name fully matches one of `patterns`, in model order."""
    compiled = [re.compile(p) for p in patterns]
    return [(name, m) for name, m in transformer.named_modules() if name and any(p.fullmatch(name) for p in compiled)]


def block_index(name: str) -> int:
    """The block number in a qualified module name (`transformer_blocks.3.ff` -> 3)."""
    return int(name.split(".")[1])


def check_no_chunking(transformer: torch.nn.Module, method: str) -> None:
    """Feed-forward chunking calls `ff` once per chunk, which no method here can follow."""
    for i, block in enumerate(transformer.transformer_blocks):
        if getattr(block, "_chunk_size", None) is not None:
            raise ValueError(
                f"{method} cannot handle transformer_blocks.{i}.ff with feed-forward chunking enabled (the module "
                "is then called once per chunk); call transformer.disable_forward_chunking() first."
            )


def hidden_states_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def tensor(shape, generator, device, random: bool = True) -> torch.Tensor:
    """A random tensor from `generator`, or an empty one on `meta`."""
    if device.type == "meta":
        return torch.empty(*shape, device=device)
    return torch.randn(*shape, generator=generator) if random else torch.ones(*shape)
