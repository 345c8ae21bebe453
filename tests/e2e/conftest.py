"""A real, small trained bundle built with the real CLI: SmolLM2-135M caption embeddings, EfficientNet-Lite0
stage-2 training on 48 scenes, ONNX export, and both indexes of the same scenes (minutes, once per run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm2clip_cli.main import main as cli

N_SCENES = 48


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    w = tmp_path_factory.mktemp("e2e")
    p = {"data": w / "data", "emb": w / "emb", "ckpt": w / "ckpt", "bundle": w / "bundle", "indexes": w / "indexes",
         "check": w / "check"}
    assert cli(["data", "scenes", "--out", str(p["data"]), "--n", str(N_SCENES), "--split", "train", "--seed", "7"]) == 0
    assert cli(["train", "embed", "--data", str(p["data"]), "--out", str(p["emb"])]) == 0
    assert cli(["train", "clip", "--data", str(p["data"]), "--embeddings", str(p["emb"]), "--out", str(p["ckpt"]),
                "--epochs", "40", "--batch-size", "16", "--image-size", "96", "--lr", "1e-3", "--backbone-lr", "3e-4",
                "--layer-decay", "1.0", "--drop-path", "0", "--no-freeze-bn",
                "--warmup-steps", "5", "--embed-dim", "128"]) == 0
    # every precision variant, each checked on held-out scenes of its own (small, so the run stays short)
    assert cli(["data", "scenes", "--out", str(p["check"]), "--n", "48", "--split", "val", "--seed", "8"]) == 0
    assert cli(["export", "--checkpoint", str(p["ckpt"]), "--out", str(p["bundle"]), "--check-data",
                str(p["check"])]) == 0
    assert cli(["index", "build", "--model", str(p["bundle"]), "--data", str(p["data"]), "--out", str(p["indexes"]),
                "--no-progress"]) == 0
    return p
