"""Batches for the training step: uniform batches without replacement from a uint8 image
tensor, or fresh samples of a 2-D toy distribution. Both are seeded by one generator whose
state (and the batcher's position) is checkpointed, so a resumed run sees the same batches;
under torchrun every rank draws the same global batch and keeps its own slice."""
from __future__ import annotations

import torch

from .dataset import DataError
from .transforms import to_float


def too_few_images(batch_size: int, world: int, n: int, failed: int = 0, source: str = "") -> str:
    """The message for a global batch larger than the ``n`` images there are: when ``failed``
    files did not decode, it says so, since the folder held enough files and the fix is
    those files or a smaller batch."""
    gb = f"--batch-size {batch_size}" + (f" x {world} processes" if world > 1 else "")
    if not failed:
        return f"{gb} is larger than the dataset ({n} images)"
    where = f" of {source!r}" if source else ""
    return (f"only {n} of the {n + failed} images{where} decoded ({failed} failed): {gb} is larger than "
            f"the {n} images left; replace the unreadable files or lower --batch-size to {max(1, n // world)}")


class ImageBatcher:
    """Uniform batches without replacement from a uint8 tensor: a seeded permutation per
    epoch (remainder dropped), gathered and normalised on the device. The whole dataset
    lives on the training device when it fits (so the step never waits for data),
    otherwise in pinned host memory with asynchronous copies."""

    def __init__(self, data: torch.Tensor, device: torch.device, generator: torch.Generator,
                 memory_format=torch.contiguous_format, rank: int = 0, world_size: int = 1,
                 say=print):
        # Under torchrun every rank holds the same permutation (same generator seed) and
        # takes its slice of each global batch, so the data position is one number for all
        # ranks and survives a change of world size.
        self.rank, self.world = rank, world_size
        self.n = data.shape[0]
        # Set by TrainingImages.load on the tensor it returns: files of the source that did
        # not decode, and the source, so a batch too large for what is left says why.
        self.failed, self.source = int(getattr(data, "num_failed", 0)), str(getattr(data, "source", ""))
        self.device = device
        self.gen = generator
        self.memory_format = memory_format
        self.data = self._place(data, say)
        self.epoch = 0
        self.offset = 0
        self.perm = torch.randperm(self.n, generator=self.gen)

    def _fits_on_device(self, data: torch.Tensor) -> bool:
        """Whether the whole dataset fits in half the device's free memory."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return data.numel() < 0.5 * free

    def _place(self, data: torch.Tensor, say) -> torch.Tensor:
        """Where the images live: on the device when they fit in half its free memory, else
        pinned host memory; sets ``on_device``."""
        self.on_device = True
        if self.device.type == "cuda":
            if self._fits_on_device(data):
                return data.to(self.device)
            self.on_device = False
            data = data.pin_memory()
            say(f"dataset ({data.numel() / 2**30:.1f} GiB) does not fit in device memory; "
                "streaming batches from pinned host memory")
        return data

    def next(self, batch_size: int) -> torch.Tensor:
        """This process's batch of ``batch_size`` from the next global batch."""
        idx = self._indices(batch_size)
        if self.on_device:
            x = self.data.index_select(0, idx.to(self.data.device, non_blocking=True))
        else:
            x = self.data.index_select(0, idx).pin_memory().to(self.device, non_blocking=True)
        return self._finish(x)

    def _indices(self, batch_size: int) -> torch.Tensor:
        """Advance the data position by one global batch; this rank's image indices."""
        gb = batch_size * self.world
        if gb > self.n:  # a DataError: the trainer reports it as one line, not as a failed step
            raise DataError(too_few_images(batch_size, self.world, self.n, self.failed, self.source))
        if self.offset + gb > self.n:
            self.epoch += 1
            self.offset = 0
            self.perm = torch.randperm(self.n, generator=self.gen)
        start = self.offset + self.rank * batch_size
        self.offset += gb
        return self.perm[start:start + batch_size]

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = to_float(x)
        if self.memory_format is torch.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def state_dict(self) -> dict:
        return {"kind": "images", "epoch": self.epoch, "offset": self.offset, "perm": self.perm.clone()}

    def load_state_dict(self, s: dict) -> None:
        if s.get("kind") != "images" or s["perm"].numel() != self.n:
            raise ValueError("--resume: the checkpoint's data position does not match the data "
                             f"({self.n} images now)")
        self.epoch, self.offset, self.perm = int(s["epoch"]), int(s["offset"]), s["perm"].clone()


class MappedBatcher(ImageBatcher):
    """ImageBatcher over the memory-mapped data cache (cache.py): the same seeded order (so
    a run gives the same batches, and resumes the same way, with or without the cache), but
    each batch is gathered from the map, pinned and copied to the device by a background
    thread one batch ahead, overlapping the step; a rank reads only its own slice. A dataset
    that fits in half the free device memory is copied there whole instead (today's path).

    ``rows``: the cache's :class:`~pyfast_gan.data.cache.CacheRows`, which reads each batch
    with ``pread`` so the map's pages never become resident (peak memory flat in the dataset
    size); without it batches are gathered from ``data`` itself."""

    def __init__(self, data: torch.Tensor, device: torch.device, generator: torch.Generator,
                 memory_format=torch.contiguous_format, rank: int = 0, world_size: int = 1,
                 say=print, rows=None):
        self.rows = rows
        super().__init__(data, device, generator, memory_format, rank, world_size, say)
        self._ahead = None  # (indices, future) of the batch being gathered
        self._pool = None
        self._stream = None

    def _place(self, data: torch.Tensor, say) -> torch.Tensor:
        """On the device when it fits (as ImageBatcher), else left on the map (not pinned:
        batches are gathered and pinned one at a time)."""
        self.on_device = self.device.type == "cuda" and self._fits_on_device(data)
        if self.on_device and self.rows is not None:  # every row trained on is checked against its CRC-32
            self.rows.verify_all()
        return data.to(self.device) if self.on_device else data

    def _load(self, idx: torch.Tensor):
        cuda = self.device.type == "cuda"
        if self.rows is not None:  # file reads happen here, off the step
            x = self.rows.gather(idx, pin=cuda)
        else:
            x = self.data.index_select(0, idx)
            x = x.pin_memory() if cuda else x
        if not cuda:
            return x, None
        with torch.cuda.stream(self._stream):
            x = x.to(self.device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self._stream)
        return x, ev

    def next(self, batch_size: int) -> torch.Tensor:
        if self.on_device:
            return super().next(batch_size)
        idx = self._indices(batch_size)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and torch.equal(ahead[0], idx):
            x, ev = ahead[1].result()
        else:  # first batch, an epoch boundary, or a position restored (resume, peek)
            x, ev = self._load(idx)
        if ev is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(ev)
            x.record_stream(cur)
        # Gather the next batch now if it is in this epoch's permutation: looking past it
        # would move the generator, whose state the checkpoint holds.
        gb = batch_size * self.world
        if self.offset + gb <= self.n:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="pyfast_gan-batches")
                if self.device.type == "cuda":
                    self._stream = torch.cuda.Stream(self.device)
            start = self.offset + self.rank * batch_size
            nxt = self.perm[start:start + batch_size].clone()
            self._ahead = (nxt, self._pool.submit(self._load, nxt))
        return self._finish(x)

    def load_state_dict(self, s: dict) -> None:
        super().load_state_dict(s)
        self.settle()

    def settle(self) -> None:
        """Drop the batch gathered ahead, after waiting for its gather and host-to-device copy:
        ``peek`` (the example batch of a CUDA-graph capture) ends here, and a capture that
        starts while the gather thread still pins memory or copies fails (both are forbidden
        during a capture) or captures a copy it did not ask for."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            _, ev = ahead[1].result()
            if ev is not None:
                ev.synchronize()


class ToyBatcher:
    """Fresh toy samples. Under torchrun every rank draws the same global batch (one
    generator, one seed) and keeps its slice: N processes x B see what one process x N*B
    would."""

    def __init__(self, sampler, device: torch.device, generator: torch.Generator,
                 rank: int = 0, world_size: int = 1):
        self.sampler, self.device, self.gen = sampler, device, generator
        self.rank, self.world = rank, world_size
        self.drawn = 0

    def next(self, batch_size: int) -> torch.Tensor:
        self.drawn += batch_size * self.world
        x = self.sampler.sample(batch_size * self.world, generator=self.gen)
        return x[self.rank * batch_size:(self.rank + 1) * batch_size].to(self.device)

    def state_dict(self) -> dict:
        return {"kind": "toy", "drawn": self.drawn}

    def load_state_dict(self, s: dict) -> None:
        self.drawn = int(s.get("drawn", 0))


def peek(batcher, batch_size: int) -> torch.Tensor:
    """The batch ``batcher.next(batch_size)`` would return, without moving the data position
    or its generator (for a CUDA-graph capture's example input)."""
    saved, gen_state = batcher.state_dict(), batcher.gen.get_state()
    try:
        return batcher.next(batch_size)
    finally:
        batcher.load_state_dict(saved)
        batcher.gen.set_state(gen_state)
