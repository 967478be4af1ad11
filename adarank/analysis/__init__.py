"""Research commands: ``adarank analyze`` (the trained update's spectrum and subspaces) and ``adarank
intrinsic-dim`` (random-subspace training, ``subspace``)."""
