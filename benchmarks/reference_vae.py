"""The reference: the canonical PyTorch VAE example, as people copy it (our own rewrite).

MLP 784-400-20 (ReLU), decoder 20-400-784 with a sigmoid, loss = ``binary_cross_entropy(...,
reduction='sum')`` + the closed-form KL, Adam lr 1e-3, batch 128, torchvision ``MNIST`` + ``ToTensor``
through a ``DataLoader`` (shuffle; ``num_workers=1, pin_memory=True`` on an accelerator, defaults on
CPU), a plain Python loop calling ``loss.item()`` every step, and a test pass after training.

Run on its own it prints one JSON line: per-epoch training seconds, images, and the final test loss
(−ELBO, nats per image, one sample):

    python benchmarks/reference_vae.py --epochs 3 [--root DIR] [--device cpu|cuda] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from data_throughput import torchvision_root
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST
from torchvision.transforms import ToTensor


class ReferenceVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def reference_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def run(root: Path, *, epochs: int, device: str, seed: int) -> dict:
    torch.manual_seed(seed)
    on_accelerator = device != "cpu"
    loader_kwargs = {"num_workers": 1, "pin_memory": True} if on_accelerator else {}
    with tempfile.TemporaryDirectory() as scratch:
        tv_root = torchvision_root(root, Path(scratch))
        train_set = MNIST(tv_root, train=True, download=False, transform=ToTensor())
        test_set = MNIST(tv_root, train=False, download=False, transform=ToTensor())
        train_loader = DataLoader(train_set, batch_size=128, shuffle=True, **loader_kwargs)
        test_loader = DataLoader(test_set, batch_size=128, shuffle=False, **loader_kwargs)
        model = ReferenceVAE().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        epoch_seconds, images = [], []
        for _ in range(epochs):
            model.train()
            start = time.perf_counter()
            train_loss, seen = 0.0, 0
            for data, _ in train_loader:
                data = data.to(device)
                optimizer.zero_grad()
                recon, mu, logvar = model(data)
                loss = reference_loss(recon, data, mu, logvar)
                loss.backward()
                train_loss += loss.item()
                optimizer.step()
                seen += data.shape[0]
            epoch_seconds.append(time.perf_counter() - start)
            images.append(seen)
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for data, _ in test_loader:
                data = data.to(device)
                recon, mu, logvar = model(data)
                test_loss += reference_loss(recon, data, mu, logvar).item()
    return {
        "epoch_seconds": epoch_seconds,
        "images": images,
        "test_loss": test_loss / len(test_set),
        "units": "nats per image",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("VAE_DATA_DIR", "data")))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.root, epochs=args.epochs, device=args.device, seed=args.seed)))


if __name__ == "__main__":
    main()
