"""Small IDX files written by the tests themselves, and an independent numpy IDX parser."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np

NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian int32 sizes, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return header + array.tobytes()


def write_file(path: Path, payload: bytes, *, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def fake_mnist(n_train: int = 300, n_test: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Four random arrays shaped like MNIST's, keyed by file name (without .gz)."""
    rng = np.random.default_rng(seed)
    return {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_fake_raw(directory: Path, arrays: dict[str, np.ndarray], *, gz: bool = True) -> dict:
    """Write ``arrays`` as IDX files into ``directory``; return their payload SHA-256s by name."""
    sums = {}
    for name, array in arrays.items():
        payload = idx_bytes(array)
        write_file(directory / (f"{name}.gz" if gz else name), payload, gz=gz)
        sums[name] = sha256(payload)
    return sums


def parse_idx_numpy(path: Path) -> np.ndarray:
    """Independent reference reader: labels start at byte 8 (magic + count), images at 16."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    magic = int.from_bytes(raw[:4], "big")
    if magic == 0x801:
        return np.frombuffer(raw, dtype=np.uint8, offset=8)
    if magic == 0x803:
        n = int.from_bytes(raw[4:8], "big")
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 28, 28)
    raise ValueError(f"{path}: magic {magic:#x}")


# ---- a data folder broken one way: (the path a message must name, how the message goes on) ----
def raw_is_a_file(raw: Path) -> tuple[Path, str]:
    shutil.rmtree(raw)
    raw.write_text("not a folder\n")
    return (
        raw,
        "a regular file, not a directory; move it away and put the files in a directory there",
    )


def root_is_a_file(raw: Path) -> tuple[Path, str]:
    root = raw.parent.parent
    shutil.rmtree(root)
    root.write_text("not a folder\n")
    return root, "a regular file where a directory should be; move it away and put the files in a "


def file_is_a_directory(raw: Path) -> tuple[Path, str]:
    path = raw / f"{NAMES[2]}.gz"
    path.unlink()
    path.mkdir()
    return path, "a directory, not a file; move it away and put the file there"


def file_symlink_loop(raw: Path) -> tuple[Path, str]:
    path = raw / f"{NAMES[2]}.gz"
    path.unlink()
    path.symlink_to(path.name)  # points at itself
    return path, f"a symbolic link loop ({os.strerror(errno.ELOOP)}); point the link at the file"


def raw_symlink_loop(raw: Path) -> tuple[Path, str]:
    shutil.rmtree(raw)
    raw.symlink_to("raw")
    return (
        raw,
        f"a symbolic link loop ({os.strerror(errno.ELOOP)}); point the link at the directory",
    )


def broken_symlink(raw: Path) -> tuple[Path, str]:
    path = raw / f"{NAMES[2]}.gz"
    path.unlink()
    target = raw.parent / "moved" / path.name
    path.symlink_to(target)
    return path, f"a broken symbolic link (to {target}, which does not exist); point it at the file"
