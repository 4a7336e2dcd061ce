"""Adversarial losses and the paper presets that go with them.

Every loss takes raw critic scores (logits), shape (N,). Scores are cast to float32 first,
so the losses are safe under autocast (bf16/fp16 scores would lose the small differences
the Wasserstein estimate is made of) and BCE is computed from logits (softplus), never
from a sigmoid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Stats = dict[str, Tensor]

LOSSES = ("dcgan", "wgan", "wgan-gp", "lsgan", "hinge", "began", "cogan")


def _f32(t: Tensor, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be critic scores of shape (N,), got {tuple(t.shape)}")
    return t.float()


def _base_stats(real: Tensor, fake: Tensor) -> Stats:
    real_mean, fake_mean = real.detach().mean(), fake.detach().mean()
    return {"d_real": real_mean, "d_fake": fake_mean, "wasserstein": real_mean - fake_mean}


# Critic terms: (real fp32, fake fp32) -> loss.  Generator terms: fake fp32 -> loss.
def _dcgan_critic(r: Tensor, f: Tensor) -> Tensor:
    # BCE(sigmoid(r), 1) + BCE(sigmoid(f), 0) = softplus(-r) + softplus(f)
    return F.softplus(-r).mean() + F.softplus(f).mean()


def _dcgan_generator(f: Tensor) -> Tensor:
    # Non-saturating: maximise log D(G(z)) (Goodfellow et al. 2014, sec. 3).
    return F.softplus(-f).mean()


def _wgan_critic(r: Tensor, f: Tensor) -> Tensor:
    return f.mean() - r.mean()


def _wgan_generator(f: Tensor) -> Tensor:
    return -f.mean()


def _lsgan_critic(r: Tensor, f: Tensor) -> Tensor:
    # Mao et al. 2017, eq. 9 with a=0, b=1, c=1.
    return 0.5 * (r - 1).square().mean() + 0.5 * f.square().mean()


def _lsgan_generator(f: Tensor) -> Tensor:
    return 0.5 * (f - 1).square().mean()


def _hinge_critic(r: Tensor, f: Tensor) -> Tensor:
    return F.relu(1 - r).mean() + F.relu(1 + f).mean()


@dataclass(frozen=True)
class Loss:
    """One adversarial loss. ``critic``/``generator`` return (0-d loss, stats of 0-d fp32
    tensors); stats are detached and always include "wasserstein" = E[D(x)] - E[D(G(z))]."""

    stateful: ClassVar[bool] = False  # no state between steps (BEGANLoss has k_t)
    name: str
    uses_gp: bool
    uses_clipping: bool
    _critic: Callable[[Tensor, Tensor], Tensor]
    _generator: Callable[[Tensor], Tensor]

    def critic(self, real_out: Tensor, fake_out: Tensor) -> tuple[Tensor, Stats]:
        r, f = _f32(real_out, "real_out"), _f32(fake_out, "fake_out")
        loss = self._critic(r, f)
        stats = _base_stats(r, f)
        stats["critic_loss"] = loss.detach()
        return loss, stats

    def generator(self, fake_out: Tensor) -> tuple[Tensor, Stats]:
        f = _f32(fake_out, "fake_out")
        loss = self._generator(f)
        return loss, {"d_fake": f.detach().mean(), "generator_loss": loss.detach()}


_LOSS_OBJECTS = {
    "dcgan": Loss("dcgan", False, False, _dcgan_critic, _dcgan_generator),
    "wgan": Loss("wgan", False, True, _wgan_critic, _wgan_generator),
    # The critic term is WGAN's; the training step adds gp_weight * gradient_penalty.
    "wgan-gp": Loss("wgan-gp", True, False, _wgan_critic, _wgan_generator),
    "lsgan": Loss("lsgan", False, False, _lsgan_critic, _lsgan_generator),
    # Generator side of the hinge loss is -E[D(G(z))] (Lim & Ye 2017; Miyato et al. 2018).
    "hinge": Loss("hinge", False, False, _hinge_critic, _wgan_generator),
    # CoGAN (Liu & Tuzel 2016) trains each of its two GANs with the standard loss; its critic
    # (models/cogan.py) returns both domains' logits per sample, so the mean over the (2N,)
    # scores is the mean of the two domains' DCGAN losses (the paper sums them: a factor 2).
    "cogan": Loss("cogan", False, False, _dcgan_critic, _dcgan_generator),
}


class BEGANLoss:
    """BEGAN (Berthelot et al. 2017, eq. 4): the critic is an auto-encoder whose "scores" are
    the per-sample L1 reconstruction errors L(v) = mean |v - D(v)| (models/began.py), so the
    step sees (N,) scores as for every loss. L_D = L(x) - k_t L(G(z_D)), L_G = L(G(z_G)).

    k_t is state: a device tensor updated in place after each generator step,
    k <- clip(k + lambda_k (gamma L(x) - L(G(z_G))), 0, 1), with L(x) from the last applied
    critic step, and left as it was when either step was skipped (non-finite), so nothing
    reads it back to the host. It is part of the checkpoint (:meth:`state_dict`).
    ``after_generator`` also returns the convergence measure
    M_global = L(x) + |gamma L(x) - L(G(z_G))| (the paper's sec. 3.4.1)."""

    name = "began"
    uses_gp = False
    uses_clipping = False
    stateful = True

    def __init__(self, gamma: float = 0.5, lambda_k: float = 0.001, k0: float = 0.0, device=None):
        self.gamma, self.lambda_k = float(gamma), float(lambda_k)
        self.k = torch.tensor(float(k0), device=device)
        self.real = torch.zeros((), device=device)  # L(x) of the last applied critic step

    def to(self, device) -> "BEGANLoss":
        self.k, self.real = self.k.to(device), self.real.to(device)
        return self

    def critic(self, real_out: Tensor, fake_out: Tensor) -> tuple[Tensor, Stats]:
        r, f = _f32(real_out, "real_out"), _f32(fake_out, "fake_out")
        loss = r.mean() - self.k * f.mean()
        stats = _base_stats(r, f)
        stats["critic_loss"] = loss.detach()
        return loss, stats

    def generator(self, fake_out: Tensor) -> tuple[Tensor, Stats]:
        f = _f32(fake_out, "fake_out")
        loss = f.mean()
        return loss, {"d_fake": f.detach().mean(), "generator_loss": loss.detach()}

    @torch.no_grad()
    def after_critic(self, stats: Stats, skipped: Tensor) -> Stats:
        self.real.copy_(torch.where(skipped.bool(), self.real, stats["d_real"].float()))
        return {}

    @torch.no_grad()
    def after_generator(self, stats: Stats, skipped: Tensor) -> Stats:
        balance = self.gamma * self.real - stats["d_fake"].float()
        k_new = (self.k + self.lambda_k * balance).clamp(0.0, 1.0)
        self.k.copy_(torch.where(skipped.bool(), self.k, k_new))
        return {"k_t": self.k.clone(), "m_global": self.real + balance.abs()}

    def state_dict(self) -> dict:
        return {"k": self.k.detach().cpu().clone(), "real": self.real.detach().cpu().clone()}

    def load_state_dict(self, s: dict) -> None:
        self.k.copy_(s["k"])
        self.real.copy_(s["real"])


def get_loss(name: str, *, gamma: float = 0.5, lambda_k: float = 0.001, k0: float = 0.0):
    """The loss object for ``name`` (one of :data:`LOSSES`). Stateless losses are shared
    objects; "began" is a fresh :class:`BEGANLoss`, since it carries k_t, with its
    hyperparameters ``gamma``, ``lambda_k`` and ``k0`` (the paper's defaults). The other losses
    have no hyperparameters and ignore them, so a caller passes its settings for every loss and
    never asks which one it has."""
    if name == "began":
        return BEGANLoss(gamma=gamma, lambda_k=lambda_k, k0=k0)
    try:
        return _LOSS_OBJECTS[name]
    except KeyError:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}") from None


def check_loss(loss):
    """``loss`` when it is a loss object; the training step and its objectives take the object
    the run built (:func:`get_loss`), never a name to look up again."""
    if isinstance(loss, str):
        raise TypeError(f"expected a loss object, got the name {loss!r}: pass "
                        f"pyfast_gan.losses.get_loss({loss!r})")
    return loss


# TrainConfig defaults per loss, as published:
# - wgan: Arjovsky et al. 2017, Algorithm 1 (alpha=5e-5, c=0.01, m=64, n_critic=5, RMSprop);
#   their DCGAN critic keeps batch norm.
# - wgan-gp: Gulrajani et al. 2017, Algorithm 1 (lambda=10, n_critic=5, Adam 1e-4,
#   beta1=0, beta2=0.9) and sec. 4: no batch norm in the critic (layer norm instead).
# - dcgan: Radford et al. 2016, sec. 4 (Adam 2e-4, beta1=0.5, batch 128).
# - lsgan: Mao et al. 2017 train with DCGAN-like settings (Adam 2e-4, beta1=0.5); we use
#   the DCGAN preset.
# - hinge: the settings of Miyato et al. 2018 (SN-GAN) for n_critic=1 (Adam 2e-4, betas
#   (0, 0.9), batch 64); without spectral norm we keep batch norm in the critic.
PRESETS: dict[str, dict] = {
    "wgan": dict(optimizer="rmsprop", lr=5e-5, clip_value=0.01, n_critic=5, batch_size=64, critic_norm="batch"),
    "wgan-gp": dict(
        optimizer="adam", lr=1e-4, betas=(0.0, 0.9), gp_weight=10.0, n_critic=5, batch_size=64, critic_norm="layer"
    ),
    "dcgan": dict(optimizer="adam", lr=2e-4, betas=(0.5, 0.999), n_critic=1, batch_size=128, critic_norm="batch"),
    "lsgan": dict(optimizer="adam", lr=2e-4, betas=(0.5, 0.999), n_critic=1, batch_size=128, critic_norm="batch"),
    "hinge": dict(optimizer="adam", lr=2e-4, betas=(0.0, 0.9), n_critic=1, batch_size=64, critic_norm="batch"),
    # began: Berthelot et al. 2017, sec. 4.1 (Adam 1e-4, batch 16, gamma 0.5, lambda_k 0.001,
    # k_0 0); it gives no betas: DCGAN's (0.5, 0.999). No normalisation in its networks.
    "began": dict(optimizer="adam", lr=1e-4, betas=(0.5, 0.999), n_critic=1, batch_size=16, critic_norm="none"),
    # cogan: Liu & Tuzel 2016, sec. 5 (Adam 2e-4, beta1 0.5, batch 128), DCGAN-style networks.
    "cogan": dict(optimizer="adam", lr=2e-4, betas=(0.5, 0.999), n_critic=1, batch_size=128, critic_norm="batch"),
}

__all__ = ["LOSSES", "PRESETS", "BEGANLoss", "Loss", "check_loss", "get_loss"]
