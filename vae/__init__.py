"""vae: a fast, honest variational autoencoder on MNIST, and a small KL-divergence library.

Importing ``vae`` loads only the KL library (:mod:`vae.losses`, plain torch) and re-exports its
public names (``from vae import gaussian_kl``); the model, data and training modules are imported
explicitly from their submodules.
"""

from vae import losses as _losses
from vae.losses import *  # noqa: F403

__all__ = list(_losses.__all__)
