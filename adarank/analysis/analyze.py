"""What an adapter learned, from its updates ΔW = s P diag(λ) Q (issue 22; the LoRA paper's section 7).

Per module, from the SVD of ΔW itself (never of Q alone: AdaLoRA keeps Q's rows near-orthonormal, so
Q's own "top" directions are arbitrary):

- the singular spectrum, the effective rank exp(H(σ/Σσ)) (Roy and Vetterli 2007), and the rank holding
  90% of ||ΔW||_F² (``energy_rank_90``);
- ``relative_norm`` = ||ΔW||_F / ||W||_F, and the amplification ||ΔW||_F / ||U_rᵀ W V_r||_F with U_r,
  V_r the top-r singular vectors of ΔW (r its rank): how much ΔW amplifies directions W already has
  (LoRA paper, Table 7);
- with a second adapter on the same base, the normalized subspace similarity
  φ(i, j) = ||U1_iᵀ U2_j||_F² / min(i, j) between the top-i and top-j left (output side) or right
  (input side) singular vectors, and its chance level for random subspaces of those sizes in R^d,
  E φ = max(i, j) / d.

The SVD comes from the factors (QR of s P diag(λ) and of Qᵀ, then an r x r SVD), exact and cheap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adarank.core.export import read_native
from adarank.reporting.report import PAGE_STYLE, figure_html
from adarank.training.setup import load_base

ENERGY = 0.9


@dataclass(frozen=True)
class Update:
    """One module's ΔW as its thin SVD: U (d_out x r), σ (r, descending), V (d_in x r)."""

    left: torch.Tensor
    values: torch.Tensor
    right: torch.Tensor

    @property
    def rank(self) -> int:
        return int((self.values > self.values.max() * 1e-6).sum()) if self.values.numel() else 0


def update_svd(left: torch.Tensor, singular: torch.Tensor, right: torch.Tensor, scaling: float) -> Update:
    """Thin SVD of s P diag(λ) Q from its factors (float64): P (d_out x r), λ (r), Q (r x d_in)."""
    scaled = left.double() * (singular.double() * scaling)
    q_left, r_left = torch.linalg.qr(scaled)
    q_right, r_right = torch.linalg.qr(right.double().T)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T)
    return Update(q_left @ u, s, q_right @ vh.T)


def effective_rank(values: torch.Tensor) -> float:
    """exp of the entropy of the normalized singular values (1 for one direction, k for k equal ones)."""
    total = float(values.sum())
    if total <= 0:
        return 0.0
    p = values.double() / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def energy_rank(values: torch.Tensor, share: float = ENERGY) -> int:
    """The fewest leading singular values holding ``share`` of the squared Frobenius norm."""
    energy = values.double() ** 2
    if float(energy.sum()) <= 0:
        return 0
    cumulative = torch.cumsum(energy, 0) / energy.sum()
    return int((cumulative < share - 1e-12).sum()) + 1


def amplification(update: Update, weight: torch.Tensor) -> float:
    """||ΔW||_F / ||U_rᵀ W V_r||_F with r the rank of ΔW (inf when W has nothing in those directions)."""
    r = update.rank
    if r == 0:
        return 0.0
    projected = update.left[:, :r].T @ weight.double() @ update.right[:, :r]
    denominator = float(torch.linalg.matrix_norm(projected))
    return float(update.values.norm()) / denominator if denominator > 0 else math.inf


def subspace_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """φ(i, j) = ||A_iᵀ B_j||_F² / min(i, j) for the first i columns of A and j of B (orthonormal
    columns), as an (r_a x r_b) grid; φ(i, j) is at [i - 1, j - 1]."""
    overlap = (a.double().T @ b.double()) ** 2
    grid = torch.cumsum(torch.cumsum(overlap, 0), 1)
    i = torch.arange(1, a.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, b.shape[1] + 1, dtype=torch.float64)[None, :]
    return grid / torch.minimum(i, j)


def chance_similarity(i: int, j: int, dim: int) -> float:
    """E φ(i, j) for uniformly random subspaces of dimensions i and j in R^dim: max(i, j) / dim."""
    return max(i, j) / dim


def module_report(update: Update, weight: torch.Tensor | None) -> dict[str, Any]:
    """The per-module figures (analysis.json contract keys first)."""
    norm = float(update.values.norm())
    return {
        "effective_rank": effective_rank(update.values),
        "energy_rank_90": energy_rank(update.values),
        "relative_norm": norm / float(weight.double().norm()) if weight is not None else None,
        "amplification": amplification(update, weight) if weight is not None else None,
        "rank": update.rank,
        "frobenius_norm": norm,
        "singular_values": [float(v) for v in update.values],
    }


def similarity_report(first: Update, second: Update) -> dict[str, Any]:
    """φ on the output (left) and input (right) side: top-1, at the smaller rank, the grid, chance levels."""
    out: dict[str, Any] = {}
    for side, a, b in (("output", first.left, second.left), ("input", first.right, second.right)):
        ra, rb = first.rank, second.rank
        if ra == 0 or rb == 0:
            out[side] = None
            continue
        grid = subspace_similarity(a[:, :ra], b[:, :rb])
        m = min(ra, rb)
        dim = a.shape[0]
        out[side] = {
            "phi_top1": float(grid[0, 0]),
            "phi_at_min_rank": float(grid[m - 1, m - 1]),
            "chance_top1": chance_similarity(1, 1, dim),
            "chance_at_min_rank": chance_similarity(m, m, dim),
            "grid": [[round(float(v), 6) for v in row] for row in grid],
        }
    return out


def adapter_updates(folder: Path) -> tuple[dict[str, Any], dict[str, Update]]:
    """The export's metadata and every live module's update SVD (rank-0 modules left out).

    Raises:
        ExportError: the folder is not a readable native export.
    """

    meta, tensors = read_native(folder)
    updates = {}
    for name, rank in meta["ranks"].items():
        if rank:
            updates[name] = update_svd(
                tensors[f"{name}.left_vectors"], tensors[f"{name}.singular_values"], tensors[f"{name}.right_vectors"],
                float(meta["scaling"][name]),
            )  # fmt: skip
    return meta, updates


def base_weights(meta: dict[str, Any], names: list[str]) -> dict[str, torch.Tensor]:
    """The frozen base weights (d_out x d_in) of the named modules, from the base model the export names."""

    _, model, _ = load_base(meta.get("base_model") or {})
    out = {}
    for name in names:
        weight = model.get_submodule(name).weight
        assert isinstance(weight, torch.Tensor)
        weight = weight.detach()
        out[name] = weight if tuple(weight.shape) == tuple(meta["shapes"][name]) else weight.T  # Conv1D: d_in x d_out
    return out


def analyze(first: Path, second: Path | None = None, with_base: bool = True) -> dict[str, Any]:
    """The analysis of one adapter (a run directory or an adapter folder), and its similarity to a second.

    Raises:
        ExportError: a folder is not a readable export; ValueError: the two have different bases.
    """
    folder = _adapter_folder(first)
    meta, updates = adapter_updates(folder)
    weights = base_weights(meta, list(updates)) if with_base else {}
    modules = {name: module_report(u, weights.get(name)) for name, u in updates.items()}
    result: dict[str, Any] = {"adapter": str(folder), "base_model": meta.get("base_model"), "modules": modules}
    if second is not None:
        other_folder = _adapter_folder(second)
        other_meta, other = adapter_updates(other_folder)
        if (other_meta.get("base_model") or {}).get("name_or_path") != (meta.get("base_model") or {}).get(
            "name_or_path"
        ):
            raise ValueError(f"`{first}` and `{second}` adapt different base models; similarity needs one base.")
        result["other"] = str(other_folder)
        for name in sorted(set(updates) & set(other)):
            modules[name]["similarity"] = similarity_report(updates[name], other[name])
    return result


def _adapter_folder(path: Path) -> Path:
    return path / "adapter" if (path / "adapter").is_dir() else path


def analysis_table(result: dict[str, Any]) -> str:
    """A terminal table, one row per module."""
    similar = "other" in result
    head = f"{'module':<48} {'rank':>4} {'eff.rank':>8} {'r90':>4} {'|dW|/|W|':>9} {'amplif.':>8}"
    head += f" {'phi out':>8} {'phi in':>8} {'chance':>7}" if similar else ""
    lines = [head]
    for name, m in result["modules"].items():
        rel = f"{m['relative_norm']:.2e}" if m["relative_norm"] is not None else "-"
        amp = f"{m['amplification']:.1f}" if m["amplification"] is not None else "-"
        line = f"{name[-48:]:<48} {m['rank']:>4} {m['effective_rank']:>8.2f} {m['energy_rank_90']:>4} {rel:>9} {amp:>8}"
        sim = m.get("similarity")
        if similar:
            if sim and sim["output"] and sim["input"]:
                line += (f" {sim['output']['phi_at_min_rank']:>8.3f} {sim['input']['phi_at_min_rank']:>8.3f}"
                         f" {sim['output']['chance_at_min_rank']:>7.3f}")  # fmt: skip
            else:
                line += f" {'-':>8} {'-':>8} {'-':>7}"
        lines.append(line)
    return "\n".join(lines)


def write_analysis(result: dict[str, Any], out: Path) -> Path:
    """analysis.json, the figures and analysis.html under ``out``; returns the page."""
    import html

    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    figures = [
        ("spectra.png", _plot_spectra(result, out / "spectra.png"),
         "Singular values of each module's update ΔW, largest first (log scale): a steep drop means few "
         "directions carry the update."),
    ]  # fmt: skip
    if "other" in result:
        caption = (
            "Subspace similarity φ at the smaller rank between the two adapters' updates, per module, "
            "output and input side; the grey marks are the chance level for random subspaces."
        )
        figures.append(("similarity.png", _plot_similarity(result, out / "similarity.png"), caption))
    body = "".join(figure_html(name, caption) for name, _, caption in figures)
    table = html.escape(analysis_table(result))
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>adarank analysis</title>"
            f"<style>{PAGE_STYLE}</style></head><body><h1>adarank analysis</h1><p>{html.escape(result['adapter'])}"
            f"{' vs ' + html.escape(result['other']) if 'other' in result else ''}</p><pre>{table}</pre>{body}"
            "</body></html>\n")  # fmt: skip
    (out / "analysis.html").write_text(page)
    return out / "analysis.html"


def _plot_spectra(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, m in result["modules"].items():
        values = [v for v in m["singular_values"] if v > 0]
        if values:
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, linewidth=1, label=name[-40:])
    ax.set_yscale("log")
    ax.set_xlabel("singular value index (largest first)")
    ax.set_ylabel("singular value of ΔW")
    ax.set_title("Spectrum of each module's update")
    if len(result["modules"]) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_similarity(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, m in result["modules"].items() if m.get("similarity") and m["similarity"]["output"]]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.28 * len(names) + 1.5)))
    y = range(len(names))
    sims = [result["modules"][n]["similarity"] for n in names]
    ax.scatter([s["output"]["phi_at_min_rank"] for s in sims], y, label="output side (U)", marker="o")
    ax.scatter([s["input"]["phi_at_min_rank"] for s in sims], y, label="input side (V)", marker="s")
    ax.scatter([s["output"]["chance_at_min_rank"] for s in sims], y, label="chance", marker="|", color="grey")
    ax.set_yticks(list(y), [n[-40:] for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("φ at the smaller rank (1 = same subspace)")
    ax.set_title("How much the two adapters' update subspaces agree")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
