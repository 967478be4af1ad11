"""What comes from disk or the hub: the embedded models and data (``assets``), hub ids (``hub``), base
models (``models``) and the run directory (``rundir``)."""
