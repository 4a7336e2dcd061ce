"""Evaluation: mode coverage for toy mixtures, Fréchet distance for feature statistics, KID,
the digits classifier's scores, FID Inception features, and :class:`Evaluator`, which applies
every measure that fits a dataset (see :mod:`pyfast_gan.metrics.evaluator`)."""
from .digits_classifier import DigitsClassifier, classifier_scores, load_digits_classifier
from .frechet import feature_statistics, frechet_distance
from .kid import kernel_inception_distance
from .modes import mode_coverage
from .evaluator import METRIC_GROUPS, Evaluator

__all__ = [
    "METRIC_GROUPS",
    "DigitsClassifier",
    "Evaluator",
    "classifier_scores",
    "feature_statistics",
    "frechet_distance",
    "kernel_inception_distance",
    "load_digits_classifier",
    "mode_coverage",
]
