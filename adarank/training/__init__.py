"""Training: the one engine behind ``adarank train`` (``engine``: one process, DDP, FSDP2), its
checkpoints, the run's set-up and evaluation, and the thin transformers Trainer integration (``callback``,
``trainer``) over the allocator's hooks."""
