"""What a run shows: the offline report (``report``), the wandb dashboards (the only place that imports
wandb), run comparison (``compare``) and the budget plan (``plan``)."""
