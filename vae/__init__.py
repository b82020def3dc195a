"""vae: a fast, honest variational autoencoder, and a small KL-divergence library.

``vae`` re-exports the public names of the KL library (:mod:`vae.kl`, plain torch:
``from vae import gaussian_kl``), loaded at the first use of one, so ``import vae.train.config``
(what ``train.py`` needs before Hydra composes) loads no torch.
The layers, each importing only those before it:
:mod:`vae.core` (torch only: networks, likelihoods, the objective, the model's settings),
:mod:`vae.train` (the Lightning/Hydra application: module, data, the run, checkpoints),
:mod:`vae.viz` (figures, the explorer page).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    import vae.kl

    if name == "__all__" or name in vae.kl.__all__:  # `from vae import *` asks for __all__ too
        return getattr(vae.kl, name)
    raise AttributeError(f"module 'vae' has no attribute {name!r}")
