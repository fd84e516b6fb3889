"""The demo's summary lines say which side is lower, as its table shows (issue 22, item 10)."""

from __future__ import annotations

from pybatch.cli.bench import comparison_line


def test_a_higher_buffered_figure_is_called_higher() -> None:
    line = comparison_line("WAL per heartbeat", 224, 258, " B")
    assert line == "WAL per heartbeat: buffered 258 B vs direct 224 B: 1.15x direct (higher)"
    assert "lower" not in line


def test_a_much_lower_figure_is_a_factor_lower() -> None:
    line = comparison_line("statements/s", 667, 0.2)
    assert line.endswith("3,335x lower than direct")


def test_a_slightly_lower_figure_is_a_fraction_of_direct() -> None:
    assert comparison_line("WAL per heartbeat", 274, 242, " B").endswith("0.88x direct (lower)")


def test_equal_figures() -> None:
    assert comparison_line("WAL per heartbeat", 200, 200.5, " B").endswith("the same as direct")
