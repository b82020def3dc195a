"""The Hydra plugins of the ``vae`` project (found by Hydra's plugin discovery in ``hydra_plugins``)."""
