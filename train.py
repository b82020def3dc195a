"""Train the VAE: ``python train.py model.latent_dim=2`` (any config key can be overridden).

See ``configs/train.yaml`` for the defaults and README.md for the options. The training stack is
imported inside ``main``, so ``python train.py --help`` answers without loading torch.
"""

import sys

#: modules of the ``train`` extra (``pip install -e '.[train]'``); a missing one is a user error
EXTRA = {"hydra", "omegaconf", "lightning", "torchvision", "tensorboard", "matplotlib", "numpy"}


def _missing_extra(err: ModuleNotFoundError) -> None:
    """One line and exit 2 when ``err`` is a module of the train extra; re-raise anything else."""
    if (err.name or "").split(".")[0] not in EXTRA:
        raise err
    print(
        f"error: train.py needs the training extra ({err.name!r} is not installed): "
        "pip install -e '.[train]' (or make install)",
        file=sys.stderr,
    )
    sys.exit(2)


try:
    import hydra
    from omegaconf import DictConfig

    import vae.train.config  # noqa: F401 (stores the model/optim/eval defaults for Hydra; no torch)
except ModuleNotFoundError as err:
    _missing_extra(err)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        from vae.train.run import run_cli
    except ModuleNotFoundError as err:
        _missing_extra(err)
    return run_cli(cfg)


def _prepare_argv() -> None:
    """Hydra's composition errors as our one ``error:`` line, exit 2; ``logger=null`` as no logger."""
    from pathlib import Path

    from vae.train.boundary import user_error_exits
    from vae.train.cli import prepare_overrides

    with user_error_exits():
        sys.argv[1:] = prepare_overrides(
            sys.argv[1:], config_dir=Path(__file__).parent / "configs", config_name="train"
        )


if __name__ == "__main__":
    _prepare_argv()
    main()
