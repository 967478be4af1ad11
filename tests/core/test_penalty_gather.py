"""The orthogonality penalty on FSDP2-sharded adapters (issue 42): all P and Q gathered in one collective
per call instead of one per factor, with today's values and gradients exactly. Two processes (gloo),
adapters sharded unevenly (7 rows as 4 + 3, rank 5 as 3 + 2, rank 1 as 1 + 0: an empty shard)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.slow

SHAPES = [(6, 7, 5), (9, 4, 3), (3, 5, 1)]  # (d_in, d_out, rank)


class _CountCollectives:
    """Counts the collectives called while active: torch.distributed's and its functional ones (which
    DTensor uses), each entry point patched for the duration."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __enter__(self) -> _CountCollectives:
        import torch.distributed as dist
        import torch.distributed._functional_collectives as funcol

        self.patched = []
        for module in (dist, funcol):
            for name in dir(module):
                if name.startswith(("all_", "reduce_scatter", "broadcast")) and callable(getattr(module, name)):
                    original = getattr(module, name)
                    self.patched.append((module, name, original))
                    setattr(module, name, self._counting(f"{module.__name__}.{name}", original))
        return self

    def _counting(self, label: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.counts[label] = self.counts.get(label, 0) + 1
            return original(*args, **kwargs)

        return call

    def __exit__(self, *exc: object) -> None:
        for module, name, original in self.patched:
            setattr(module, name, original)


def _penalties(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    from adarank.core.layers import SVDLinear
    from adarank.core.regularization import orthogonality_penalty
    from adarank.core.sharding import full, is_sharded, local

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # fmt: skip
    torch.manual_seed(0)
    adapters = nn.ModuleList([SVDLinear(nn.Linear(i, o), rank=r, alpha=1.0) for i, o, r in SHAPES])
    with torch.no_grad():  # off orthonormality, so the penalty and its gradient are not zero
        for adapter in adapters:
            adapter.left_vectors.add_(0.3 * torch.randn_like(adapter.left_vectors))
            adapter.right_vectors.add_(0.3 * torch.randn_like(adapter.right_vectors))
            adapter.rank_mask[-1] = 0.0
    for adapter in adapters:
        fully_shard(adapter)
    assert all(is_sharded(a.left_vectors) and is_sharded(a.right_vectors) for a in adapters)
    factors = [p for a in adapters for p in (a.left_vectors, a.right_vectors)]
    results: dict[str, Any] = {}
    for live_only in (False, True):
        with _CountCollectives() as counter:
            # the earlier code: a gather per factor
            terms = []
            for a in adapters:
                left, right = full(a.left_vectors).float(), full(a.right_vectors).float()
                eye = torch.eye(a.rank)
                if live_only:
                    mask = a.rank_mask.float()
                    left, right, eye = left * mask, right * mask[:, None], torch.diag(mask)
                terms.append(((left.T @ left - eye) ** 2).sum() + ((right @ right.T - eye) ** 2).sum())
            before = torch.stack(terms).sum()
        before_gathers = sum(counter.counts.values())
        before.backward()
        before_grads = [local(p.grad).clone() for p in factors]
        for p in factors:
            p.grad = None
        with _CountCollectives() as counter:
            now = orthogonality_penalty(list(adapters), live_only=live_only)
        now.backward()
        results[str(live_only)] = {
            "before": before.detach(), "now": now.detach(), "before_gathers": before_gathers,
            "now_gathers": counter.counts, "before_grads": before_grads,
            "now_grads": [local(p.grad).clone() for p in factors],
        }  # fmt: skip
        for p in factors:
            p.grad = None
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_one_gather_for_all_factors_gives_todays_penalty_and_gradients(tmp_path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_penalties, args=(r, str(tmp_path / "store"), str(tmp_path))) for r in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    runs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for run in runs:
        for live_only in ("False", "True"):
            case = run[live_only]
            assert case["before_gathers"] == 2 * len(SHAPES), "the earlier code: one gather per factor"
            assert sum(case["now_gathers"].values()) == 1, case["now_gathers"]
            assert torch.equal(case["now"], case["before"]) and case["now"] > 0
            for now, before in zip(case["now_grads"], case["before_grads"], strict=True):
                assert torch.equal(now, before)
            assert sum(g.abs().sum() > 0 for g in case["now_grads"]) >= 3, "gradients that could differ"
    assert torch.equal(runs[0]["False"]["now"], runs[1]["False"]["now"]), "every process the same penalty"
    sizes = [g.shape[0] for g in runs[1]["True"]["now_grads"]]
    assert sizes == [3, 2, 2, 1, 2, 0], "uneven shards, one of them empty on process 1"
