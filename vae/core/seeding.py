"""Seeds derived from names, so each random stream is a function of what it is for, not of what ran
before it (the training order of an epoch, the evaluation noise of an image, a binarisation draw)."""

from __future__ import annotations

import hashlib


def derive_seed(key: object) -> int:
    """A 63-bit seed named by ``key``: the first 8 bytes (little-endian) of the SHA-256 of its text,
    a string as it is and anything else as its ``repr``, so the seed is the same in every process
    and Python session (``hash`` is salted per process).

    The data streams are named by tuples (``("shuffle", seed, epoch)``), the evaluation noise by
    ``"<eval.seed>/<split>/<block>"``: the names they had before there was one function, so a
    checkpoint evaluates to the numbers it gave then (the val/test −ELBO of the same weights).
    """
    text = key if isinstance(key, str) else repr(key)
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
