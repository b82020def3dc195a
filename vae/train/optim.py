"""The optimiser and learning-rate schedule of ``optim.*``: Adam(W), cosine per step, or Burda et al.'s."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from vae.core.config import OptimConfig

__all__ = ["burda_lr_factor", "configure_optimizer"]


def burda_lr_factor(epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (from 0) over ``optim.lr`` under ``optim.scheduler=burda``:
    10^(−i/7) in stage i, which lasts 3^i epochs (Burda et al. 2015, §5: epochs 0 | 1–3 | 4–12 | …;
    stage i ends after (3^(i+1) − 1) / 2 epochs, so 8 stages are 3280 epochs)."""
    stage = 0
    while (3 ** (stage + 1) - 1) // 2 <= epoch:
        stage += 1
    return 10.0 ** (-stage / 7)


def configure_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig, *, total_steps: int
) -> Any:
    """What ``LightningModule.configure_optimizers`` returns for ``cfg``: Adam(W) at ``cfg.lr``,
    alone (``scheduler=none``), with the cosine schedule over ``total_steps`` steps down to
    ``lr · min_lr_ratio``, or with the Burda et al. schedule by epoch (:func:`burda_lr_factor`)."""
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optimizer]
    # fused: one kernel for the whole update (benchmarks/README.md)
    optimizer = kind(
        params,
        lr=float(cfg.lr),
        weight_decay=float(cfg.weight_decay),
        eps=float(cfg.eps),
        fused=True,
    )
    if cfg.scheduler == "none":
        return optimizer
    if cfg.scheduler == "burda":
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, burda_lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=float(cfg.lr) * float(cfg.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
