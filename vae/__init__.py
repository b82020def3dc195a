"""vae: a fast, honest variational autoencoder, and a small KL-divergence library.

Importing ``vae`` loads only the KL library (:mod:`vae.kl`, plain torch) and re-exports its public
names (``from vae import gaussian_kl``). The layers, each importing only those before it:
:mod:`vae.core` (torch only: networks, likelihoods, the objective, the model's settings),
:mod:`vae.train` (the Lightning/Hydra application: module, data, the run, checkpoints),
:mod:`vae.viz` (figures, the explorer page).
"""

from vae.kl import *  # noqa: F403
from vae.kl import __all__  # noqa: F401
