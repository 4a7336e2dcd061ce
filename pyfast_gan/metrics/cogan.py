"""CoGAN's pair correspondence (Liu & Tuzel 2016, sec. 5: the "pixel agreement ratio" of
the digit experiments): for each generated pair (a, b) from one z, apply the domain
transformation T to a and count the pixels where T(a) and b agree within a tolerance.

A high score alone proves little when most pixels are background (two unrelated digits
agree on much of their black border), so it is always reported beside the same score for
*unpaired* samples: pairs formed with shuffled z (:func:`correspondence_scores`).
"""
from __future__ import annotations

import torch

# |T(a) - b| on the [0, 1] pixel scale that still counts as agreement.
TOLERANCE = 0.25


def pair_correspondence(a: torch.Tensor, b: torch.Tensor, transform, tol: float = TOLERANCE) -> float:
    """Fraction of pixels where ``transform(a)`` and ``b`` (images in [-1, 1], same shape)
    differ by at most ``tol`` on the [0, 1] scale."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ta = transform(a.float())
    return float(((ta - b.float()).abs() / 2 <= tol).float().mean())


def shuffled(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded permutation of range(n) with no fixed point (every pair broken)."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to shuffle, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.roll(perm, 1)[torch.argsort(perm)]  # i -> the next element of the cycle perm


def correspondence_scores(a: torch.Tensor, b: torch.Tensor, transform, tol: float = TOLERANCE,
                          seed: int = 0) -> dict:
    """``pair_correspondence`` of the pairs as generated and of pairs with shuffled z (each a
    paired with the b of another z): ``{"paired", "shuffled"}``."""
    return {"paired": pair_correspondence(a, b, transform, tol),
            "shuffled": pair_correspondence(a, b[shuffled(a.shape[0], seed)], transform, tol)}


@torch.no_grad()
def generate_pairs(G: torch.nn.Module, n: int, seed: int = 0, batch_size: int = 500):
    """(A, B) images (float32, CPU) of a CoGAN generator from ``n`` fixed noise vectors."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    was = G.training
    G.eval()
    device = next(G.parameters()).device
    try:
        x = torch.cat([G(z[i:i + batch_size].to(device)).float().cpu() for i in range(0, n, batch_size)])
    finally:
        G.train(was)
    c = x.shape[1] // 2
    return x[:, :c], x[:, c:]


def score_cogan(G: torch.nn.Module, evaluator, domain: str | None) -> dict:
    """Scores of a CoGAN generator with ``evaluator`` (its fixed noise: ``evaluator.n`` pairs
    from ``evaluator.seed``): domain A's scores; domain B's, when B can be made A-like again
    (the digits' negatives are their own inverse; edge images have none); and the pair
    correspondence against shuffled pairs when the domain's transformation is known (the
    embedded digits: ``domain`` "negative" or "edges"; None for a --data-b PATH). The trainer
    (--eval-every), ``python -m pyfast_gan.evaluate`` and the comparison study all score
    CoGAN here. Returns ``{"a": ..., "b": ... or None, "correspondence": ... or None}``."""
    from pyfast_gan.data.cogan import TRANSFORMS, negative

    a, b = generate_pairs(G, evaluator.n, seed=evaluator.seed, batch_size=evaluator.batch_size)

    def batches(x):
        return (t.to(evaluator.device) for t in x.split(evaluator.batch_size))

    return {"a": evaluator.score_batches(batches(a)),
            "b": evaluator.score_batches(batches(negative(b))) if domain == "negative" else None,
            "correspondence": (correspondence_scores(a, b, TRANSFORMS[domain], seed=evaluator.seed)
                               if domain in TRANSFORMS else None)}


def flat_cogan_scores(scores: dict) -> dict:
    """:func:`score_cogan`'s result as one flat record (a metrics.jsonl line, evaluate's JSON):
    domain A's keys as they are, domain B's as ``b_<key>``, ``correspondence`` and
    ``correspondence_shuffled``."""
    out = dict(scores["a"])
    out.update({f"b_{k}": v for k, v in (scores["b"] or {}).items()})
    if scores["correspondence"] is not None:
        out["correspondence"] = scores["correspondence"]["paired"]
        out["correspondence_shuffled"] = scores["correspondence"]["shuffled"]
    return out
