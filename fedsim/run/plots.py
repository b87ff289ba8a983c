"""Plots people would rather see than read (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_roc(report: dict, path: str | Path) -> None:
    """Final ROC curve per hospital (thin) and pooled (thick) from a metrics report."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, m in sorted(report["hospitals"].items()):
        if m["roc"]["fpr"]:
            ax.plot(m["roc"]["fpr"], m["roc"]["tpr"], lw=1, alpha=0.8,
                    label=f"{name} (AUC {m['auc']:.3f})")
    pooled = report["pooled"]
    ax.plot(pooled["roc"]["fpr"], pooled["roc"]["tpr"], lw=2.5, color="black",
            label=f"pooled (AUC {pooled['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(report.get("title", "ROC on the test split, final global model"))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def plot_sweep(points: list[dict], path: str | Path, *, title: str) -> None:
    """Final ROC AUC, balanced accuracy and precision against the privacy budget: the
    mean over a point's seeds, with its min-max range when there are several."""
    labels = ["no DP" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
              for r in points]
    x = list(range(len(points)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name in (("auc", "ROC AUC"), ("balanced_accuracy", "balanced accuracy"),
                      ("precision", "precision")):
        mean = [r[key] for r in points]
        low = [r[key] - r.get(f"{key}_min", r[key]) for r in points]
        high = [r.get(f"{key}_max", r[key]) - r[key] for r in points]
        ax.errorbar(x, mean, yerr=[low, high], marker="o", capsize=3, label=name)
    ax.set_xticks(x, labels)
    against = next((r.get("epsilon_against") for r in points if r.get("epsilon_against")),
                   None)
    seeds = max(r.get("seeds", 1) for r in points)
    ax.set_xlabel("target epsilon" + (f" against the {against}" if against else "")
                  + " (delta as configured)")
    ax.set_ylabel("test score, final global model"
                  + (f" (mean, min-max of {seeds} seeds)" if seeds > 1 else ""))
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def plot_sweep_roc(curves: dict, path: str | Path, *, title: str) -> None:
    """One pooled test ROC curve per target epsilon (None: no DP)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for eps, roc in curves.items():
        if roc and roc.get("fpr"):
            ax.plot(roc["fpr"], roc["tpr"], lw=1.8,
                    label="no DP" if eps is None else f"epsilon {eps:g}")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{title}\npooled test ROC, the run of median AUC", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def plot_baselines(b: dict, path: str | Path) -> None:
    """Pooled test ROC AUC of the federated model beside the centralized and each
    local-only model (`fedsim.run.baselines`), as horizontal bars."""
    from fedsim.run.baselines import baseline_rows

    rows = [r for r in baseline_rows(b) if r[1] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.4))
    colours = {"federated": "tab:blue", "centralized": "tab:green"}
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r[1] for r in rows], color=[colours.get(r[0], "tab:grey") for r in rows])
    for yi, (_, auc, what) in zip(y, rows):
        ax.text(auc + 0.005, yi, f"{auc:.3f}  {what}", va="center", fontsize=8)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    low = min(r[1] for r in rows)
    ax.set_xlim(max(0.0, low - 0.1), 1.0)
    ax.set_xlabel("pooled test ROC AUC")
    ax.set_title("what federating bought (baselines plaintext, no DP)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def plot_seeds(rows: list[dict], path: str | Path, *, title: str) -> None:
    """Each run's pooled test ROC AUC (one dot per seed) for the federated model, the
    best local-only model and the centralized one, with the mean of each as a line."""
    series = [("federated", "auc"), ("best local", "best_local_auc"),
              ("centralized", "centralized_auc")]
    series = [(name, key) for name, key in series if any(r[key] is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if not series:  # no run had a defined AUC (one-class test splits)
        ax.text(0.5, 0.5, "no run has a defined pooled test ROC AUC", ha="center",
                transform=ax.transAxes)
        series, rows = [], []
    for i, (_, key) in enumerate(series):
        values = [r[key] for r in rows if r[key] is not None]
        color = "C3" if key == "auc" else "k"
        ax.hlines(sum(values) / len(values), i - 0.25, i + 0.25, color=color, lw=2)
        ax.scatter([i] * len(values), values, color=color, s=16, alpha=0.7, zorder=3)
    ax.set_xticks(range(len(series)), [name for name, _ in series])
    low = min((r[k] for r in rows for _, k in series if r[k] is not None), default=0.0)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_xlim(-0.6, len(series) - 0.4)
    ax.set_ylabel(f"pooled test ROC AUC ({len(rows)} seeds: dots; mean: line)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
