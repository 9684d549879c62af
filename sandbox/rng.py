"""Named, keyed random streams.

Every draw comes from a stream keyed by (seed, name, day). Adding a fault or a new stage therefore never
shifts the draws of another stage, so a world with a fault is identical to the no-fault world of the
same seed until the fault's onset.
"""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, name: str, day: int = 0) -> np.random.Generator:
    key = [seed & 0xFFFFFFFF, zlib.crc32(name.encode()), (day + 1_000_000) & 0xFFFFFFFF]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def stable_unit(ids: np.ndarray, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per id that never changes: picks stable subsets of entities."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(zlib.crc32(salt.encode()))
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
