"""Mean ± sd over seeds, of numbers and of nested metric records."""

from __future__ import annotations

from research.seed_stats import average, fmt_mean_sd


def test_format():
    assert fmt_mean_sd([0.25]) == "0.250"
    assert fmt_mean_sd([0.2, 0.4, 0.6]) == "0.400 ± 0.200"
    assert fmt_mean_sd([0.2, None]) == "-" and fmt_mean_sd([]) == "-"


def test_average_of_records_keeps_what_agrees_and_averages_numbers():
    a = {"t2i_r1": 0.25, "n": 12, "dataset": "DIR/data/test", "ok": True, "by": {"size": [0.5, 1.0]}, "only_a": 1}
    b = {"t2i_r1": 0.75, "n": 12, "dataset": "DIR/data/test", "ok": True, "by": {"size": [1.0, 1.0]}}
    assert average([a, b]) == {"t2i_r1": 0.5, "n": 12, "dataset": "DIR/data/test", "ok": True,
                               "by": {"size": [0.75, 1.0]}}
    assert average([{"model": "x"}, {"model": "y"}]) == {"model": ["x", "y"]}  # differs per seed: each kept
    assert average([None, None]) is None and average([a]) == a
