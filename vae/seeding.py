"""Seeds derived from names, so each random stream is a function of what it is for, not of what ran
before it (the training order of an epoch, the evaluation noise of an image, a binarisation draw)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (e.g. ``("shuffle", seed, epoch)``): the first 8 bytes of the
    SHA-256 of their ``repr``, so it is the same in every process and Python session (``hash`` is
    salted per process)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
