"""research.twin_significance: twin pairs counted once, seeds per row, Holm across the run's comparisons."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm2clip.errors import LLM2CLIPError
from research import twin_significance as sig

# 8 twin pairs (16 scenes), each scored both ways: (2i, 2i+1) and (2i+1, 2i)
PAIRS = [p for i in range(8) for p in ((2 * i, 2 * i + 1), (2 * i + 1, 2 * i))]


def _hits(t2i, i2t) -> dict[str, np.ndarray]:
    return {"t2i": np.array(t2i, bool), "i2t": np.array(i2t, bool)}


def test_both_orders_of_a_twin_pair_are_one_cluster():
    # the reference gets every ordered pair right, the other none: 8 discordant twin pairs, not 16
    best, worst = _hits([1] * 16, [1] * 16), _hits([0] * 16, [0] * 16)
    out = sig.significance({"llm_cc": [best], "clip77": [worst]}, PAIRS, 16)
    assert (out["n_twin_pairs"], out["n_ordered_pairs"]) == (8, 16)
    t = out["comparisons"]["t2i"]["clip77"]
    assert t["n_clusters"] == 8 and t["discordant"] == 8
    assert t["p"] == pytest.approx(2 / 2**8)  # exact: 2 of 256 sign patterns; as 16 pairs it would be 2 / 2**16
    assert out["family"] == 2 and t["p_holm"] == pytest.approx(4 / 2**8) and t["significant"]


def test_seeds_per_row_mean_sd_and_the_pooled_metric():
    rng = np.random.default_rng(0)
    seeds = [_hits(rng.random(16) < 0.7, rng.random(16) < 0.6) for _ in range(3)]
    other = [_hits(rng.random(16) < 0.5, rng.random(16) < 0.5)]
    out = sig.significance({"llm_cc": seeds, "minilm": other}, PAIRS, 16, pooled=True)
    assert out["seeds"] == {"llm_cc": 3, "minilm": 1}
    acc = out["accuracy"]["llm_cc"]["t2i"]
    per_seed = [float(s["t2i"].mean()) for s in seeds]
    assert acc["per_seed"] == pytest.approx(per_seed) and acc["sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert acc["text"] == f"{np.mean(per_seed):.3f} ± {np.std(per_seed, ddof=1):.3f}"
    assert out["accuracy"]["minilm"]["t2i"]["sd"] is None
    assert out["family"] == 3 and set(out["comparisons"]) == {"t2i", "i2t", "t2i+i2t"}
    pooled = out["comparisons"]["t2i+i2t"]["minilm"]
    mean_t2i_i2t = np.mean([np.mean([s["t2i"].mean(), s["i2t"].mean()]) for s in seeds])
    assert pooled["n_clusters"] == 8 and pooled["mean_a"] == pytest.approx(mean_t2i_i2t)


def test_parse_bundles():
    assert sig.parse_bundles(["a=x,y,z", "b=w"]) == {"a": [sig.Path(p) for p in "xyz"], "b": [sig.Path("w")]}
    for bad, match in ((["a=x", "b"], "write NAME=BUNDLE"), (["a=x", "a=y"], "given twice"),
                       (["a=x,y"], "at least two rows")):
        with pytest.raises(LLM2CLIPError, match=match):
            sig.parse_bundles(bad)


def test_cli_on_real_bundles(tiny_bundle, tmp_path, capsys):
    from llm2clip.data import generate_scenes

    test = tmp_path / "test"
    generate_scenes(test, 10, "test", 3, progress=False)
    sig.main(["--data", str(test), "--bundle", f"llm_cc={tiny_bundle},{tiny_bundle}", "--bundle",
              f"clip77={tiny_bundle}", "--pooled"])
    out = json.loads(capsys.readouterr().out)
    assert (out["n_twin_pairs"], out["n_ordered_pairs"], out["seeds"]) == (5, 10, {"llm_cc": 2, "clip77": 1})
    for metric in ("t2i", "i2t", "t2i+i2t"):
        t = out["comparisons"][metric]["clip77"]  # one model against itself: nothing to find
        assert t["difference"] == 0 and t["p"] == 1.0 and t["p_holm"] == 1.0 and not t["significant"]
        assert t["ci95"] == [0.0, 0.0] and t["n_clusters"] == 5
    assert out["accuracy"]["llm_cc"]["t2i"]["sd"] == 0.0


def test_cli_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sig.main(["--data", str(tmp_path), "--bundle", "a=x"])
    assert exc.value.code == 2 and "at least two rows" in capsys.readouterr().err
