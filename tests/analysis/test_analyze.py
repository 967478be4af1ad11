"""`adarank analyze` (issue 22) on known answers: identical subspaces give φ = 1 and orthogonal ones 0, a
planted spectrum its effective and 90%-energy ranks, the SVD from the factors equals the dense one, the
chance level matches sampling, and the command writes analysis.json with its contract keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from adarank.analysis.analyze import (
    Update,
    amplification,
    chance_similarity,
    effective_rank,
    energy_rank,
    similarity_report,
    subspace_similarity,
    update_svd,
)
from adarank.cli import main


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_identical_subspaces_score_one_and_orthogonal_ones_zero() -> None:
    basis = _orthonormal(32, 8, 0)
    same = subspace_similarity(basis[:, :4], basis[:, :4])
    assert torch.allclose(same, torch.ones(4, 4, dtype=torch.float64))  # nested prefixes: min(i, j) shared
    rotated = basis[:, :4] @ _orthonormal(4, 4, 1)  # the same span, other vectors: phi at full rank is 1
    assert float(subspace_similarity(basis[:, :4], rotated)[3, 3]) == pytest.approx(1.0)
    assert torch.allclose(subspace_similarity(basis[:, :4], basis[:, 4:]), torch.zeros(4, 4, dtype=torch.float64))


def test_a_planted_spectrum_gives_its_effective_and_energy_ranks() -> None:
    assert effective_rank(torch.tensor([2.0, 2.0, 2.0, 2.0])) == pytest.approx(4.0)
    assert effective_rank(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))  # of (4, 1) / 5
    assert effective_rank(torch.tensor([4.0, 1.0])) == pytest.approx(math.exp(entropy), rel=1e-12)  # 1.6494
    assert energy_rank(torch.tensor([3.0, 1.0])) == 1  # 9 / 10 of the energy in the first
    assert energy_rank(torch.tensor([2.0, 2.0, 1.0])) == 3  # 8 / 9 < 0.9 with two
    assert energy_rank(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])) == 9


def test_the_svd_from_the_factors_is_the_svd_of_the_dense_update() -> None:
    g = torch.Generator().manual_seed(3)
    left, values, right = torch.randn(20, 5, generator=g), torch.randn(5, generator=g), torch.randn(5, 12, generator=g)
    update = update_svd(left, values, right, scaling=0.5)
    dense = (left.double() * (values.double() * 0.5)) @ right.double()
    assert torch.allclose(update.values, torch.linalg.svdvals(dense)[:5])
    rebuilt = update.left @ torch.diag(update.values) @ update.right.T
    assert torch.allclose(rebuilt, dense, atol=1e-10) and update.rank == 5


def test_amplification_of_a_known_update() -> None:
    out_basis, in_basis = _orthonormal(16, 3, 4), _orthonormal(10, 3, 5)
    u, v = out_basis[:, :2], in_basis[:, :2]
    update = Update(u, torch.tensor([4.0, 3.0], dtype=torch.float64), v)  # ||dW||_F = 5
    weight = 0.5 * u @ v.T + 7.0 * out_basis[:, 2:] @ in_basis[:, 2:].T  # a large part W has elsewhere
    # U^T W V = 0.5 I (the other part is orthogonal): amplification = 5 / (0.5 * sqrt(2))
    assert amplification(update, weight) == pytest.approx(5 / (0.5 * 2**0.5), rel=1e-9)


def test_the_chance_level_matches_random_subspaces() -> None:
    dim, i, j, samples = 64, 4, 8, 400
    found = [float(subspace_similarity(_orthonormal(dim, i, 2 * s), _orthonormal(dim, j, 2 * s + 1))[i - 1, j - 1])
             for s in range(samples)]  # fmt: skip
    assert sum(found) / samples == pytest.approx(chance_similarity(i, j, dim), abs=0.01)  # 8 / 64
    report = similarity_report(
        Update(_orthonormal(dim, 3, 9), torch.ones(3, dtype=torch.float64), _orthonormal(dim, 3, 10)),
        Update(_orthonormal(dim, 3, 9), torch.ones(3, dtype=torch.float64), _orthonormal(dim, 3, 11)),
    )
    assert report["output"]["phi_top1"] == pytest.approx(1.0) and report["output"]["phi_at_min_rank"] == pytest.approx(
        1.0
    )
    a, b = _orthonormal(dim, 3, 10), _orthonormal(dim, 3, 11)  # the input sides: 3 of 64 dimensions at random
    assert report["input"]["phi_top1"] == pytest.approx(float(a[:, 0] @ b[:, 0]) ** 2, rel=1e-12)
    assert report["input"]["phi_at_min_rank"] == pytest.approx(float(torch.linalg.matrix_norm(a.T @ b)) ** 2 / 3)
    assert report["input"]["chance_at_min_rank"] == 3 / dim and report["input"]["chance_top1"] == 1 / dim


def _run(model: Path, out: Path, seed: int) -> None:
    assert main(["train", f"model.name_or_path={model}", f"output_dir={out}", f"seed={seed}", "train.max_steps=6",
                 "train.batch_size=8", "data.max_train_samples=64", "data.max_eval_samples=16", "budget.init_rank=3",
                 "budget.target_rank=2", "budget.t_init=1", "budget.t_final=2", "budget.mask_interval=1",
                 "train.learning_rate=0.01", "wandb.mode=disabled"]) == 0  # fmt: skip


def _dense_updates(run: Path) -> dict[str, torch.Tensor]:
    """Each live module's ΔW = s P diag(λ) Q (float64), read from the run's adapter files."""
    folder = run / "adapter"
    meta = json.loads((folder / "adarank_adapter.json").read_text())
    tensors = load_file(str(folder / "adapter.safetensors"))
    return {
        name: float(meta["scaling"][name]) * (tensors[f"{name}.left_vectors"].double()
               * tensors[f"{name}.singular_values"].double()) @ tensors[f"{name}.right_vectors"].double()
        for name, rank in meta["ranks"].items() if rank
    }  # fmt: skip


def _phi(a: torch.Tensor, b: torch.Tensor, m: int) -> float:
    """φ(m, m) = ||A_mᵀ B_m||_F² / m."""
    return float(torch.linalg.matrix_norm(a[:, :m].T @ b[:, :m])) ** 2 / m


def test_analyze_writes_the_contract_keys_for_one_and_two_adapters(tmp_path: Path, capsys) -> None:
    """Every figure recomputed here from the adapter files and the base weights by a dense SVD of ΔW: the
    spectrum, effective and 90%-energy ranks, relative norm and amplification; a run against itself has φ = 1
    everywhere, and two runs the φ of their dense updates' singular vectors."""
    model = tmp_path / "model"
    save_tiny_model(model, llama=False)
    _run(model, tmp_path / "a", 0)
    _run(model, tmp_path / "b", 1)
    assert main(["analyze", str(tmp_path / "a")]) == 0
    one = json.loads((tmp_path / "a" / "analysis" / "analysis.json").read_text())
    ranks = {n: r for n, r in json.loads((tmp_path / "a" / "allocation.json").read_text()).items() if r}
    assert set(one["modules"]) == set(ranks)
    base = BertForSequenceClassification.from_pretrained(model)
    dense = {"a": _dense_updates(tmp_path / "a"), "b": _dense_updates(tmp_path / "b")}
    svd = {run: {n: torch.linalg.svd(d, full_matrices=False) for n, d in updates.items()} for run, updates in
           dense.items()}  # fmt: skip
    for name, module in one["modules"].items():
        u, sigma, vh = svd["a"][name]
        r = ranks[name]
        assert module["rank"] == r and float(sigma[r - 1]) > 1e-6 * float(sigma[0])
        assert module["singular_values"] == pytest.approx(sigma[:r].tolist(), rel=1e-9, abs=1e-12)
        p = sigma[:r] / sigma[:r].sum()
        assert module["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-9)
        energy = torch.cumsum(sigma**2, 0) / (sigma**2).sum()
        assert module["energy_rank_90"] == int((energy < 0.9).sum()) + 1
        weight = base.get_submodule(name).weight.detach().double()
        assert module["relative_norm"] == pytest.approx(float(dense["a"][name].norm() / weight.norm()), rel=1e-9)
        projected = u[:, :r].T @ weight @ vh[:r].T
        assert module["amplification"] == pytest.approx(float(sigma.norm() / projected.norm()), rel=1e-9)
    same = tmp_path / "aa"
    assert main(["analyze", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(same)]) == 0
    for name, module in json.loads((same / "analysis.json").read_text())["modules"].items():
        for side in ("input", "output"):
            similarity = module["similarity"][side]
            assert similarity["phi_top1"] == pytest.approx(1.0, abs=1e-12), (name, side)
            assert all(v == pytest.approx(1.0, abs=1e-12) for row in similarity["grid"] for v in row), (name, side)
    out = tmp_path / "ab"
    assert main(["analyze", str(tmp_path / "a"), str(tmp_path / "b" / "adapter"), "--out", str(out)]) == 0
    two = json.loads((out / "analysis.json").read_text())
    ranks_b = {n: r for n, r in json.loads((tmp_path / "b" / "allocation.json").read_text()).items() if r}
    shared = set(ranks) & set(ranks_b)
    assert {n for n, m in two["modules"].items() if "similarity" in m} == shared
    for name in shared:
        (ua, _, vha), (ub, _, vhb) = svd["a"][name], svd["b"][name]
        m = min(ranks[name], ranks_b[name])
        for side, a, b in (("output", ua, ub), ("input", vha.T, vhb.T)):
            similarity = two["modules"][name]["similarity"][side]
            assert similarity["phi_top1"] == pytest.approx(_phi(a, b, 1), abs=1e-9), (name, side)
            assert similarity["phi_at_min_rank"] == pytest.approx(_phi(a, b, m), abs=1e-9), (name, side)
            assert similarity["chance_at_min_rank"] == m / a.shape[0]
    assert (out / "analysis.html").is_file() and (out / "similarity.png").is_file() and (out / "spectra.png").is_file()
    assert "phi out" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path)]) == 2  # not an adapter: a clear refusal
    assert "is not an adarank adapter" in capsys.readouterr().err
