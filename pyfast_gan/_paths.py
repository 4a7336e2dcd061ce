"""Where pyfast_gan keeps what it computes once and reuses: the one cache root that the data
cache (data/cache.py), the digits classifier and the FID reference features live under. Its
own module because data sits below metrics: neither should import the other for a folder."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$PYFAST_GAN_CACHE, else $XDG_CACHE_HOME/pyfast_gan, else ~/.cache/pyfast_gan."""
    env = os.environ.get("PYFAST_GAN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyfast_gan"
