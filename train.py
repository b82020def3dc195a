"""Train the VAE: ``python train.py model.latent_dim=2`` (any config key can be overridden).

See ``configs/train.yaml`` for the defaults and README.md for the options.
"""

import hydra
from omegaconf import DictConfig

from vae.training import run_cli


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_cli(cfg)


if __name__ == "__main__":
    main()
