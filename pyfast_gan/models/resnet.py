"""ResNet generator and critic from the WGAN-GP paper's CIFAR-10 model
(Gulrajani et al. 2017, gan_cifar_resnet.py), generalised to 32..128 pixels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_model_args, critic_norm, spatial_plan


class _UpBlock(nn.Module):
    """BN-ReLU-up-conv3-BN-ReLU-conv3, shortcut up-conv1 (the paper's ResidualBlock 'up').
    Nearest upsampling equals the paper's depth_to_space of a tiled input and is
    deterministic in backward on CUDA (unlike bilinear)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        h = F.relu(self.bn1(x))
        h = self.conv1(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv2(F.relu(self.bn2(h)))
        return h + self.shortcut(up)


class _DownBlock(nn.Module):
    """Critic residual block, 'down' (conv3, conv3, mean-pool; shortcut pool-conv1) or
    'none' (identity shortcut). Pre-activation: norm-ReLU-conv."""

    def __init__(self, cin: int, cout: int, norm: str, down: bool):
        super().__init__()
        self.down = down
        self.n1, self.conv1 = critic_norm(norm, cin), nn.Conv2d(cin, cin, 3, 1, 1)
        self.n2, self.conv2 = critic_norm(norm, cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if (down or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.n1(x)))
        h = self.conv2(F.relu(self.n2(h)))
        s = x
        if self.down:
            h = F.avg_pool2d(h, 2)
            s = F.avg_pool2d(s, 2)
        return h + self.shortcut(s)


class _FirstDownBlock(nn.Module):
    """The paper's OptimizedResBlockDisc1: conv3-ReLU-conv3-pool, shortcut pool-conv1
    (no activation on the raw image)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(x))), 2)
        return h + self.shortcut(F.avg_pool2d(x, 2))


class ResNetGenerator(nn.Module):
    """z -> Linear to start x start x base -> up blocks -> BN-ReLU-conv3-tanh.
    At 32 px: 4 -> 8 -> 16 -> 32 with base=128, as in the paper."""

    def __init__(self, image_size: int = 32, channels: int = 3, z_dim: int = 128, base: int = 128):
        super().__init__()
        check_model_args(image_size, channels, base, z_dim=z_dim)
        self.image_size, self.channels, self.z_dim, self.base = image_size, channels, z_dim, base
        self.start, n = spatial_plan(image_size)
        self.fc = nn.Linear(z_dim, self.start * self.start * base)
        self.blocks = nn.Sequential(*[_UpBlock(base, base) for _ in range(n)])
        self.bn = nn.BatchNorm2d(base)
        self.out = nn.Conv2d(base, channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z.reshape(z.shape[0], self.z_dim)).reshape(z.shape[0], self.base, self.start, self.start)
        h = self.blocks(h)
        return torch.tanh(self.out(F.relu(self.bn(h))))


class ResNetCritic(nn.Module):
    """image -> first down block -> down blocks to 8x8 (6x6 at 96 px) -> two plain blocks ->
    ReLU -> spatial mean -> Linear -> (N,). At 32 px exactly the paper's critic. The paper's
    WGAN-GP critic has no normalisation (norm="none")."""

    def __init__(self, image_size: int = 32, channels: int = 3, base: int = 128, norm: str = "none"):
        super().__init__()
        check_model_args(image_size, channels, base, norm=norm)
        self.image_size, self.channels, self.norm = image_size, channels, norm
        start, n = spatial_plan(image_size)
        n_down = n - 1  # to 2*start: 8x8 at 32 px, as in the paper
        blocks: list[nn.Module] = [_FirstDownBlock(channels, base)]
        blocks += [_DownBlock(base, base, norm, down=True) for _ in range(n_down - 1)]
        blocks += [_DownBlock(base, base, norm, down=False) for _ in range(2)]
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(base, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(x)).mean(dim=(2, 3))
        return self.fc(h).reshape(x.shape[0])
