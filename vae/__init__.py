"""vae: a fast, honest variational autoencoder on MNIST, and a small KL-divergence library.

Importing ``vae`` loads only the KL library (:mod:`vae.losses`, plain torch); the model, data and
training modules are imported explicitly from their submodules.
"""

from vae.losses import (
    GaussianKLLoss,
    cross_entropy,
    discrete_kl,
    entropy,
    gaussian_kl,
    gaussian_kl_per_dim,
    mvn_kl,
    smoothed,
)

__all__ = [
    "GaussianKLLoss",
    "cross_entropy",
    "discrete_kl",
    "entropy",
    "gaussian_kl",
    "gaussian_kl_per_dim",
    "mvn_kl",
    "smoothed",
]
