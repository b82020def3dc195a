"""The networks: encoders q(z | x), decoders p(x | z) and the :class:`VAE` that ties them together.

Plain ``nn.Module``s with every size taken from arguments (the Hydra ``model`` config); the Lightning
wrapper lives in :mod:`vae.train.module`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vae.core import config
from vae.core.config import ARCHITECTURES, NORMS, ModelConfig
from vae.core.likelihoods import build_likelihood

#: ``model.activation`` → its module class (the names: :data:`vae.core.config.ACTIVATIONS`)
ACTIVATIONS: dict[str, type[nn.Module]] = {
    name: getattr(nn, cls) for name, cls in config.ACTIVATIONS.items()
}


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """bound · tanh(x / bound): the identity near 0, smoothly saturating at ±bound (finite gradients)."""
    return bound * torch.tanh(x / bound)


def mlp(
    sizes: Sequence[int], activation: str, *, final_activation: bool = False, norm: str = "none"
) -> nn.Sequential:
    """Linear layers ``sizes[0] → sizes[1] → …`` with ``activation`` between them.

    ``norm="layer"`` puts a LayerNorm (Ba et al. 2016) between each hidden Linear and its activation.
    It normalises each image's features on their own, so a batch's outputs do not depend on the other
    images in it (unlike BatchNorm): evaluation, DDP and any batch size give the same numbers.
    """
    if norm not in NORMS:
        raise ValueError(f"model.norm={norm!r} is not one of {NORMS}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            if norm == "layer":
                layers.append(nn.LayerNorm(n_out))
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianHead(nn.Module):
    """Features ``(B, F)`` → (mu, logvar), each ``(B, latent_dim)``.

    logvar is soft-clamped to [−logvar_bound, logvar_bound] (σ ∈ [e^{−b/2}, e^{b/2}]): the identity in the
    range a trained encoder uses, and it keeps exp(logvar) finite if an update throws a unit far out.
    """

    def __init__(self, in_features: int, latent_dim: int, *, logvar_bound: float) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, 2 * latent_dim)
        self.logvar_bound = logvar_bound

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw_logvar = self.proj(h).chunk(2, dim=-1)  # (B, 2d) -> 2 × (B, d)
        return mu, soft_clamp(raw_logvar, self.logvar_bound)


class MLPEncoder(nn.Module):
    def __init__(
        self,
        *,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: str,
        logvar_bound: float,
        norm: str = "none",
    ) -> None:
        super().__init__()
        n_pixels = math.prod(image_shape)
        self.body = mlp([n_pixels, *hidden_dims], activation, final_activation=True, norm=norm)
        self.head = GaussianHead(hidden_dims[-1], latent_dim, logvar_bound=logvar_bound)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.body(x.flatten(start_dim=1)))  # (B, C, H, W) -> (B, C·H·W)


class MLPDecoder(nn.Module):
    def __init__(
        self,
        *,
        image_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: str,
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        n_pixels = math.prod(image_shape)
        self.net = mlp([latent_dim, *reversed(hidden_dims), n_pixels], activation, norm=norm)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unflatten(-1, self.image_shape)  # (B, C·H·W) -> (B, C, H, W)

    @torch.no_grad()
    def set_output_bias(self, out: Tensor) -> None:
        """Set the last layer's bias to ``out`` ``(C, H, W)``: one bias per pixel."""
        self.net[-1].bias.copy_(out.flatten())  # (C, H, W) -> (C·H·W,)


class ConvEncoder(nn.Module):
    """Stride-2 3×3 convolutions (28 → 14 → 7 for two stages), then an MLP to (mu, logvar)."""

    def __init__(
        self,
        *,
        image_shape: Sequence[int],
        channels: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: str,
        logvar_bound: float,
        norm: str = "none",
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
            h, w = (h + 1) // 2, (w + 1) // 2
        self.conv = nn.Sequential(*layers)
        self.body = mlp(
            [channels[-1] * h * w, *hidden_dims], activation, final_activation=True, norm=norm
        )
        self.head = GaussianHead(hidden_dims[-1], latent_dim, logvar_bound=logvar_bound)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.body(self.conv(x).flatten(start_dim=1)))  # (B, C', h, w) -> (B, C'hw)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: MLP, then stride-2 transposed convolutions back to the image."""

    def __init__(
        self,
        *,
        image_shape: Sequence[int],
        channels: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: str,
        norm: str = "none",
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        sizes = [(h, w)]
        for _ in channels:
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        self.start_shape = (channels[-1], *sizes[-1])
        widths = [latent_dim, *reversed(hidden_dims), math.prod(self.start_shape)]
        self.body = mlp(widths, activation, final_activation=True, norm=norm)
        layers: list[nn.Module] = []
        rev = list(reversed(channels))
        for i, (c_in, c_out) in enumerate(zip(rev, [*rev[1:], c], strict=True)):
            target, current = sizes[len(channels) - 1 - i], sizes[len(channels) - i]
            # output_padding makes 7 -> 14 -> 28 exact (and 4 -> 7 for odd sizes)
            pad = (target[0] - (2 * current[0] - 1), target[1] - (2 * current[1] - 1))
            deconv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad)
            layers += [deconv, ACTIVATIONS[activation]()]
        self.deconv = nn.Sequential(*layers[:-1])  # no activation after the output layer

    def forward(self, z: Tensor) -> Tensor:
        # (B, C'hw) -> (B, C', h, w) -> (B, C, H, W)
        return self.deconv(self.body(z).unflatten(-1, self.start_shape))

    @torch.no_grad()
    def set_output_bias(self, out: Tensor) -> None:
        """Set the last layer's bias from ``out`` ``(C, H, W)``: a convolution has one per channel,
        the average of ``out`` over the channel's pixels."""
        self.deconv[-1].bias.copy_(out.mean(dim=(1, 2)))  # (C, H, W) -> (C,)


class VAE(nn.Module):
    """Encoder q(z | x) = N(mu, diag exp(logvar)), decoder output, and the likelihood p(x | z)."""

    def __init__(self, *, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(B, C, H, W)`` in [0, 1] → (mu, logvar), each ``(B, latent_dim)``."""
        return self.encoder(x)

    @torch.no_grad()
    def init_output_bias(self, pixel_mean: Tensor, *, eps: float = 1e-3) -> None:
        """Start the decoder at the data's mean image: the output bias becomes the output whose
        likelihood mean is ``pixel_mean`` ``(C, H, W)`` (clipped to [eps, 1 − eps], so a pixel that
        is always 0 starts at logit −6.9 rather than −∞).

        Before any training the decoder's output is then close to the mean image instead of 0.5
        everywhere, which saves the first few hundred steps of learning it (a common data-dependent
        initialisation). :class:`vae.train.module.VAEModule` calls this once,
        before the first step, with the training split's mean; a resumed run keeps its weights.
        """
        m = pixel_mean.to(torch.float64).clamp(eps, 1.0 - eps)
        out = self.likelihood.output_for_mean(m)
        self.decoder.set_output_bias(out.to(next(self.decoder.parameters()).dtype))

    def decode(self, z: Tensor) -> Tensor:
        """Latent codes ``(B, latent_dim)`` → decoder output ``(B, C, H, W)`` (logits or mean)."""
        return self.decoder(z)

    @staticmethod
    def reparameterize(
        mu: Tensor, logvar: Tensor, *, n_samples: int | None = None, eps: Tensor | None = None
    ) -> Tensor:
        """z = mu + σ ⊙ ε, ε ~ N(0, I) (Kingma & Welling 2013, eq. 10).

        Shapes: mu, logvar ``(B, d)`` → z ``(B, d)``, or ``(n_samples, B, d)`` when ``n_samples`` is given.
        ``eps`` (same shape as z) supplies the noise instead of the global RNG.
        """
        std = torch.exp(0.5 * logvar)
        if eps is None:
            shape = mu.shape if n_samples is None else (n_samples, *mu.shape)
            eps = torch.randn(shape, dtype=mu.dtype, device=mu.device)
        return mu + std * eps


def build_vae(*, config: ModelConfig, image_shape: Sequence[int]) -> VAE:
    """Build the :class:`VAE` that ``config``'s network keys describe, for images ``(C, H, W)``."""
    if config.architecture not in ARCHITECTURES:
        raise ValueError(
            f"model.architecture={config.architecture!r} is not one of {ARCHITECTURES}"
        )
    conv = config.architecture == "conv"
    common = {
        "image_shape": tuple(image_shape),
        "hidden_dims": list(config.hidden_dims),
        "latent_dim": config.latent_dim,
        "activation": config.activation,
        "norm": config.norm,
        **({"channels": list(config.channels)} if conv else {}),
    }
    encoder = (ConvEncoder if conv else MLPEncoder)(**common, logvar_bound=config.logvar_bound)
    decoder = (ConvDecoder if conv else MLPDecoder)(**common)
    lik = build_likelihood(
        config.likelihood, gaussian_std=config.gaussian_std, learn_std=config.learn_std
    )
    return VAE(encoder=encoder, decoder=decoder, likelihood=lik)
