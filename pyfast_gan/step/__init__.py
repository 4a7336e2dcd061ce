"""The training step (step.py: GANStep, the optimizer factory), its objectives (objective.py:
the critic loss with the penalty, eager or compiled through the double backward), CUDA-graph
capture of the same step (cuda_graphs.py) and data-parallel gradient sync for torchrun
(distributed.py)."""
from .objective import CriticObjective, GeneratorObjective, critic_loss, has_trace_autograd_ops
from .step import GANStep, build_optimizers

__all__ = ["GANStep", "build_optimizers", "CriticObjective", "GeneratorObjective", "critic_loss",
           "has_trace_autograd_ops"]
