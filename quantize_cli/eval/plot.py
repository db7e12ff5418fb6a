"""compare --plot: mean KL divergence against file size, one point per candidate (matplotlib,
the optional extra pyquantize[plot])."""

from __future__ import annotations

from pathlib import Path

from .errors import EvalError


def check_available(path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise EvalError("--plot needs matplotlib: pip install 'pyquantize[plot]'")
    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise EvalError(f"--plot {path}: give a .png, .svg or .pdf file name")
    from ..formats.output import check_writable

    check_writable(Path(path))


def plot_kld_vs_size(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..formats.output import atomic_outputs

    rows = result.rows()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["size_bytes"] / 1048576 for r in rows]
    ys = [r["kld_mean"] for r in rows]
    ax.scatter(xs, ys)
    for x, y, c in zip(xs, ys, result.candidates):
        ax.annotate(c.path.stem, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("mean KL divergence vs base")
    if all(y > 0 for y in ys):
        ax.set_yscale("log")
    ax.set_title(f"{result.base.path.name}: {result.n_tokens} tokens")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_outputs([Path(path)]) as temps:
        fig.savefig(temps[0], format=Path(path).suffix.lstrip(".").lower())
    plt.close(fig)
