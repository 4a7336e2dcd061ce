def clip_weights_(*args, **kwargs):  # placeholder until the op lands
    raise NotImplementedError("clip_weights_")
