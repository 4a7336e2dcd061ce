"""The training data of a run (train.run.build's first step): the batcher, the data RNG it
draws from, the image size and channels the data decided, the memory format of the batches,
and what evaluation needs (toy points, decoded images). Toy 2-D sets are sampled; images
come from the decoded-dataset cache (data/cache.py) or memory, CoGAN's two domains in
memory. A bad path or size fails here, before any model is built."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pyfast_gan.data import TOY_DATASETS
from pyfast_gan.data.batch import ImageBatcher, MappedBatcher, ToyBatcher
from pyfast_gan.models import IMAGE_SIZES

from .config import TrainConfig


@dataclass
class Inputs:
    batcher: object
    data_gen: torch.Generator
    memory_format: torch.memory_format
    image_size: int                    # 0 for toy data
    channels: int
    toy: tuple | None = None           # (real points, modes, std) for toy evaluation
    real_u8: torch.Tensor | None = None  # decoded images, for the evaluator only


def toy_std(sampler, name: str) -> float:
    std = getattr(sampler, "std", None)
    if std is not None:
        return float(std)
    # The WGAN-GP toy code's noise, after its final rescaling.
    return {"8gaussians": 0.02 / 1.414, "25gaussians": 0.05 / 2.828}.get(name, 0.05)


def build_inputs(cfg: TrainConfig, device: torch.device, rank: int, world: int, say) -> Inputs:
    is_toy = cfg.data in TOY_DATASETS
    progress = cfg.progress and rank == 0  # bars on rank 0 only
    data_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    memory_format = torch.channels_last if (cfg.channels_last and not is_toy) else torch.contiguous_format
    if cfg.channels_last and is_toy:
        say("--channels-last: no effect on 2-D toy data; ignored")
    toy, real_u8 = None, None
    if is_toy:
        from pyfast_gan.data import ToySampler

        sampler = ToySampler(cfg.data)
        batcher = ToyBatcher(sampler, device, data_gen, rank, world)
        image_size, channels = 0, 0
        real_pts = sampler.sample(2000, generator=torch.Generator().manual_seed(cfg.seed + 11))
        toy = (real_pts, getattr(sampler, "modes", None), toy_std(sampler, cfg.data))
    else:
        from pyfast_gan.data import TensorImageDataset, decode_all, open_dataset
        from pyfast_gan.data.cache import TrainingImages

        # One domain is decoded once into the on-disk cache (pyfast_gan.data.cache) and mapped
        # from it on later runs; CoGAN reads its two domains in memory.
        images = TrainingImages(cfg.data, data_format=cfg.data_format, image_size=cfg.image_size or None,
                                channels=cfg.channels or None, crop=cfg.crop, max_images=cfg.max_images,
                                cache="off" if cfg.loss == "cogan" else cfg.data_cache,
                                progress=progress)
        ds = images.ds if images.ds is not None else images  # len, image_size, channels before decoding
        if cfg.loss == "cogan":
            # Batches of (A, B) side by side in the channels, unpaired (data/cogan.py); the
            # size check below applies to the smaller domain.
            from pyfast_gan.data.cogan import digit_domains

            if cfg.data_b:
                a_u8 = decode_all(ds, num_workers=cfg.num_workers, progress=progress)
                ds_b = open_dataset(cfg.data_b, image_size=ds.image_size, channels=ds.channels)
                b_u8 = decode_all(ds_b, num_workers=cfg.num_workers, progress=progress)
            else:
                a_u8, b_u8 = digit_domains(decode_all(ds), cfg.cogan_domain, cfg.seed + 17)
            ds = TensorImageDataset(a_u8 if len(a_u8) <= len(b_u8) else b_u8, source=cfg.data)
        if len(ds) < cfg.batch_size * world:
            raise ValueError(f"--batch-size {cfg.batch_size}"
                             + (f" x {world} processes" if world > 1 else "")
                             + f" is larger than the dataset ({len(ds)} images in {cfg.data!r})")
        image_size, channels = ds.image_size, ds.channels
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"--image-size: the data's size {image_size} is not supported "
                             f"by the models; pass --image-size one of {IMAGE_SIZES}")
        if cfg.loss == "cogan":
            from pyfast_gan.data.cogan import PairBatcher

            real_u8 = a_u8
            batcher = PairBatcher(ImageBatcher(a_u8, device, data_gen, memory_format, rank, world, say=say),
                                  ImageBatcher(b_u8, device, data_gen, memory_format, rank, world, say=say))
        else:
            # batch_size: files that turn out unreadable while decoding can leave fewer images
            # than one batch; that is a one-line DataError here, before the run writes anything.
            real_u8, rows = images.load(num_workers=cfg.num_workers, progress=progress,
                                        say=say, rank=rank, world=world, batch_size=cfg.batch_size)
            if rows is None:
                batcher = ImageBatcher(real_u8, device, data_gen, memory_format, rank, world, say=say)
            else:
                batcher = MappedBatcher(real_u8, device, data_gen, memory_format, rank, world, say=say,
                                        rows=rows)
    return Inputs(batcher, data_gen, memory_format, image_size, channels, toy, real_u8)
