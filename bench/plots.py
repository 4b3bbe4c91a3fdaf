"""The benchmarks' SVG plots: pure functions, figures in -> one SVG file out.

Owns how each benchmark's samples are drawn (matplotlib, the Agg backend, no pyplot state: one ``Figure``
per plot) and where the files go (``docs/perf/`` by default, so a ``make bench`` run refreshes the committed
plots; ``python -m bench --plots DIR`` picks another directory). The files are reproducible: a fixed
``svg.hashsalt`` (the ids inside the SVG) and no date in the metadata, so the same figures give the same
bytes. Must not measure anything or reach the network: the benchmarks pass their samples in.

Plots:
- ``reconcile_cost``: seconds against cluster size, one line per series (log-log), e.g. planning and the
  ``members()`` read from 10 to 10,000 members;
- ``join_propagation``: push against poll-only, the samples of each figure (box plot and the runs as dots);
- ``fanout_latency``: the distribution of block seen -> delivered latencies (histogram, median and p99);
- ``healthy_over_time``: the number of healthy nodes at each sample during a rolling restart, per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: Where plots go unless ``python -m bench --plots DIR`` says otherwise (relative to the repository).
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "docs" / "perf"
#: The salt of the SVG element ids: fixed, so the same figures give the same file.
HASH_SALT = "attestmesh-bench"
_SIZE = (7.0, 4.2)  # inches


class Output:
    """The directory the benchmarks write their plots to (set once by ``python -m bench``)."""

    directory: Path = DEFAULT_DIR

    @classmethod
    def path(cls, name: str) -> Path:
        return cls.directory / f"{name}.svg"


def _new(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=_SIZE, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": HASH_SALT, "svg.fonttype": "none"}):
        fig.savefig(path, format="svg", metadata={"Date": None})
    return path


def _require(samples: Sequence[object], what: str) -> None:
    if not samples:
        raise ValueError(f"no samples to plot for {what}")


def reconcile_cost(series: Mapping[str, Sequence[tuple[int, float]]], path: Path, *, title: str = "") -> Path:
    """Seconds against cluster size: ``series`` maps a label to its (members, seconds) points."""
    _require(list(series.values()), "reconcile cost")
    fig, ax = _new(title or "Reconcile cost vs cluster size", "cluster size (members)", "time per pass (ms)")
    for label, points in series.items():
        _require(points, label)
        ordered = sorted(points)
        ax.plot([n for n, _ in ordered], [s * 1000 for _, s in ordered], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    return _save(fig, path)


def join_propagation(
    modes: Mapping[str, Mapping[str, Sequence[float]]], path: Path, *, title: str = ""
) -> Path:
    """Push against poll: ``modes`` maps a mode (``push``, ``poll only``) to figure name -> samples (s)."""
    _require(list(modes.values()), "join propagation")
    figures = list(next(iter(modes.values())))
    fig, ax = _new(title or "Join propagation: push vs poll", "figure", "seconds (each dot one run)")
    width = 0.8 / len(modes)
    for m, (mode, by_figure) in enumerate(modes.items()):
        data = [list(by_figure.get(name, ())) for name in figures]
        for name, samples in zip(figures, data, strict=True):
            _require(samples, f"{mode}: {name}")
        positions = [i + (m - (len(modes) - 1) / 2) * width for i in range(len(figures))]
        colour = f"C{m}"
        ax.boxplot(
            data,
            positions=positions,
            widths=width * 0.8,
            showfliers=False,
            patch_artist=False,
            boxprops={"color": colour},
            medianprops={"color": colour},
            whiskerprops={"color": colour},
            capprops={"color": colour},
        )
        for x, samples in zip(positions, data, strict=True):
            ax.plot([x] * len(samples), samples, linestyle="none", marker=".", color=colour, alpha=0.7)
        ax.plot([], [], color=colour, label=mode)  # the legend's entry
    ax.set_xticks(range(len(figures)), [_wrap(name) for name in figures], fontsize="small")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return _save(fig, path)


def fanout_latency(samples: Sequence[float], path: Path, *, subscribers: int, title: str = "") -> Path:
    """The distribution of ``samples`` (seconds, block seen -> delivered) over ``subscribers`` clients."""
    _require(samples, "fan-out latency")
    ms = sorted(s * 1000 for s in samples)
    median = ms[len(ms) // 2]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    fig, ax = _new(
        title or f"Indexer fan-out latency, {subscribers} subscribers",
        "block seen -> delivered (ms)",
        "deliveries",
    )
    ax.hist(ms, bins=min(60, max(10, len(ms) // 20)), color="C0", alpha=0.8)
    ax.axvline(median, color="C1", linestyle="--", label=f"median {median:.1f} ms")
    ax.axvline(p99, color="C3", linestyle=":", label=f"p99 {p99:.1f} ms")
    ax.legend(fontsize="small")
    return _save(fig, path)


def healthy_over_time(
    runs: Sequence[Sequence[tuple[float, int]]], path: Path, *, nodes: int, title: str = ""
) -> Path:
    """Healthy nodes at each sample: ``runs`` holds one series of (seconds since the start, count) per run."""
    _require(runs, "healthy nodes over time")
    fig, ax = _new(
        title or f"Healthy nodes during a rolling restart of {nodes}",
        "seconds since the roll started",
        "healthy nodes",
    )
    for i, series in enumerate(runs, start=1):
        _require(series, f"run {i}")
        ax.step([t for t, _ in series], [c for _, c in series], where="post", label=f"run {i}", alpha=0.8)
    ax.set_ylim(-0.2, nodes + 0.2)
    ax.set_yticks(range(nodes + 1))
    ax.legend(fontsize="small")
    return _save(fig, path)


def _wrap(text: str, width: int = 28) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)
