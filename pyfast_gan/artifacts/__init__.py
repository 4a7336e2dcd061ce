"""What a run leaves on disk, readable without the trainer: checkpoints (``checkpoint``) and
sample grids, scatter plots, the metrics log and its figures (``outputs``). ``sample``,
``evaluate`` and ``experiments`` read runs through this package only, so loading a
checkpoint never imports ``pyfast_gan.train``."""
