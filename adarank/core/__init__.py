"""The method, with no Trainer and no run directory: SVD adapters (``layers``, ``inject``), importance
scores, the budget schedule, the allocator that owns the allocation's lifecycle (masks, finalization,
shrink, state), the orthogonality penalty, the warm start, FSDP2-aware tensor views and the exports."""
