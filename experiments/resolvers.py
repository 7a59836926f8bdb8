"""OmegaConf resolvers used by conf/.

`cat_warmup`: the authors use 8 full steps of 28; at other step counts the warm-up keeps that share,
round(8 / 28 * steps), at least 2 (50 steps -> 14, 20 steps -> 6).
"""

from omegaconf import OmegaConf


def cat_warmup(steps: int) -> int:
    return max(2, round(8 * int(steps) / 28))


OmegaConf.register_new_resolver("cat_warmup", cat_warmup, replace=True)
