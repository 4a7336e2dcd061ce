"""The fast training step: compiled critic objective (penalty included), CUDA graphs, and
data-parallel helpers for torchrun. See compile.py, cuda_graphs.py, distributed.py."""
from .compile import (CriticObjective, GeneratorObjective, has_trace_autograd_ops,
                      make_critic_objective)

__all__ = ["CriticObjective", "GeneratorObjective", "make_critic_objective",
           "has_trace_autograd_ops"]
