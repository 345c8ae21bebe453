"""research.compare_oracles: paired tests between vision sides, clustered by twin pair, Holm over the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from research import compare_oracles as co


def _run(tmp_path, name, twin_t2i, r1, split="val", pairs=None):
    n = len(r1)
    pairs = pairs or [[i, i ^ 1] for i in range(n)]  # scenes 2k and 2k+1 are twins, each pair both ways
    folder = tmp_path / name
    folder.mkdir()
    per_query = {"twin_pairs": pairs, "t2i_r1": r1, "i2t_r1": r1, "twin_t2i": twin_t2i, "twin_i2t": twin_t2i}
    (folder / "oracle.json").write_text(json.dumps({"split": split, "per_query": per_query}))
    return f"{name}={folder}"


def test_a_clear_gain_survives_holm_and_equal_runs_do_not(tmp_path, capsys):
    n = 40
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, n).tolist()
    better = [1] * n
    runs = [_run(tmp_path, "A", base, base), _run(tmp_path, "B", better, base), _run(tmp_path, "C", base, base)]
    out = tmp_path / "cmp.json"
    co.main([f"--run={r}" for r in runs] + ["--compare", "B-A", "--compare", "C-A", "--out", str(out)])
    entries = {(e["b"], e["metric"]): e for e in json.loads(out.read_text())}
    gain = entries[("B", "twin_t2i")]
    assert gain["n_clusters"] == n // 2  # a scene, its twin and both directions: one cluster
    assert gain["difference"] == pytest.approx(1 - np.mean(base)) and gain["p_holm"] < 0.05
    assert gain["b_ahead"] > 0 and gain["a_ahead"] == 0
    assert entries[("B", "t2i_r1")]["p"] == 1.0  # same R@1 outcomes: no difference
    assert all(e["p"] == 1.0 and e["difference"] == 0 for (b, _), e in entries.items() if b == "C")
    assert all(e["p_holm"] >= e["p"] for e in entries.values())  # Holm over 8 tests never lowers a p
    assert "| B - A | twin_t2i | 1.000 |" in capsys.readouterr().out


def test_a_run_over_seeds_enters_each_query_averaged(tmp_path):
    """Two seeds of B, one all hits and one all misses, average to B's half; against A's single seed of halves
    hit and half missed, per cluster, the difference is zero."""
    n = 8
    half = [1, 1, 0, 0, 1, 1, 0, 0]  # hits on whole clusters (scenes 2k, 2k+1)
    a = _run(tmp_path, "A", half, half)
    b1, b2 = _run(tmp_path, "B1", [1] * n, [1] * n), _run(tmp_path, "B0", [0] * n, [0] * n)
    out = tmp_path / "cmp.json"
    co.main(["--run", a, "--run", f"B={b1.split('=')[1]},{b2.split('=')[1]}", "--compare", "B-A", "--out", str(out)])
    entries = {e["metric"]: e for e in json.loads(out.read_text())}
    assert entries["t2i_r1"]["b_mean"] == pytest.approx(0.5) and entries["t2i_r1"]["difference"] == pytest.approx(0)
    c = _run(tmp_path, "C", [1] * n, [1] * n, split="test")
    with pytest.raises(SystemExit, match="different scenes"):
        co.main(["--run", f"A={b1.split('=')[1]},{c.split('=')[1]}", "--run", a, "--compare", "A-A"])


def test_runs_scored_on_other_scenes_are_refused(tmp_path):
    r1 = [1, 0, 1, 0]
    a = _run(tmp_path, "A", r1, r1, split="val")
    b = _run(tmp_path, "B", r1, r1, split="test")
    with pytest.raises(SystemExit, match="different scenes"):
        co.main(["--run", a, "--run", b, "--compare", "B-A"])


def test_a_run_without_per_query_outcomes_says_how_to_get_them(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "oracle.json").write_text(json.dumps({"long": {}}))
    with pytest.raises(SystemExit, match="rerun"):
        co.main(["--run", f"A={tmp_path / 'old'}", "--run", f"B={tmp_path / 'old'}", "--compare", "B-A"])
