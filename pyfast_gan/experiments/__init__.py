"""Studies built from the trainer and the metrics: ``python -m pyfast_gan.experiments compare``."""
