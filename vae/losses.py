"""The KL library's former name: ``from vae.losses import ...`` keeps working; the code is :mod:`vae.kl`."""

from vae.kl import *  # noqa: F403
from vae.kl import __all__  # noqa: F401
