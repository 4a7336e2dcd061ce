"""Evaluation: mode coverage for toy mixtures, Fréchet distance for feature statistics."""
from .frechet import feature_statistics, frechet_distance
from .modes import mode_coverage

__all__ = ["feature_statistics", "frechet_distance", "mode_coverage"]
