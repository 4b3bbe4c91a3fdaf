"""bench.plots: each plot renders from small synthetic figures into an SVG that parses and carries its title
and axis labels; the same figures give the same bytes; no samples is a clear error, not an empty plot."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import plots

SVG = "{http://www.w3.org/2000/svg}"


def _texts(path: Path) -> str:
    root = ET.parse(path).getroot()  # raises on a file that is not XML
    assert root.tag == f"{SVG}svg"
    return " ".join("".join(el.itertext()) for el in root.iter(f"{SVG}text"))


def _reconcile(path: Path) -> Path:
    return plots.reconcile_cost(
        {
            "plan: no change": [(10, 2e-6), (100, 2e-5), (1000, 2e-4)],
            "members() read": [(100, 0.02), (1000, 0.2)],
        },
        path,
    )


def _join(path: Path) -> Path:
    return plots.join_propagation(
        {
            "push": {"mined -> every device": [0.3, 0.4, 0.35], "eviction -> off every device": [0.3, 0.5]},
            "poll only": {
                "mined -> every device": [1.1, 1.4, 0.9],
                "eviction -> off every device": [1.0, 1.2],
            },
        },
        path,
    )


def _fanout(path: Path) -> Path:
    return plots.fanout_latency([0.001 * (i % 37) for i in range(400)], path, subscribers=200)


def _healthy(path: Path) -> Path:
    return plots.healthy_over_time(
        [[(0.0, 3), (0.5, 2), (2.0, 3)], [(0.0, 3), (0.7, 2), (1.8, 3)]], path, nodes=3
    )


CASES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "reconcile": (_reconcile, ("Reconcile cost vs cluster size", "cluster size (members)",
                               "time per pass (ms)", "members() read")),
    "join": (_join, ("Join propagation: push vs poll", "figure", "push", "poll only")),
    "fanout": (_fanout, ("Indexer fan-out latency, 200 subscribers", "block seen -> delivered (ms)",
                         "deliveries", "median", "p99")),
    "healthy": (_healthy, ("Healthy nodes during a rolling restart of 3", "seconds since the roll started",
                           "healthy nodes", "run 2")),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_plot_renders_a_parseable_svg_with_its_title_and_axis_labels(name: str, tmp_path: Path) -> None:
    render, expected = CASES[name]
    path = render(tmp_path / "sub" / f"{name}.svg")
    assert path == tmp_path / "sub" / f"{name}.svg" and path.is_file()
    text = _texts(path)
    for label in expected:
        assert label in text, f"{label!r} missing from the {name} plot"


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_same_figures_give_the_same_bytes(name: str, tmp_path: Path) -> None:
    render, _ = CASES[name]
    first = render(tmp_path / "a.svg").read_bytes()
    second = render(tmp_path / "b.svg").read_bytes()
    assert first == second
    assert b"<dc:date>" not in first  # no date in the metadata


def test_no_samples_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no samples"):
        plots.fanout_latency([], tmp_path / "f.svg", subscribers=1)
    with pytest.raises(ValueError, match="no samples"):
        plots.reconcile_cost({"empty": []}, tmp_path / "r.svg")
    with pytest.raises(ValueError, match="no samples"):
        plots.healthy_over_time([], tmp_path / "h.svg", nodes=3)
    with pytest.raises(ValueError, match="poll only"):
        plots.join_propagation({"push": {"x": [1.0]}, "poll only": {"x": []}}, tmp_path / "j.svg")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_output_directory_is_docs_perf_unless_told() -> None:
    assert plots.DEFAULT_DIR.parts[-2:] == ("docs", "perf")
    assert plots.Output.path("x") == plots.Output.directory / "x.svg"
