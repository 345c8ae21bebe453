"""Resumable builds: shards saved beside the target, a killed build resumed, and the same index as a clean build."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from index_builder_helpers import PixelMapper, db_rows, make_dataset
from PIL import Image

from index_builder.reader import Skip
from index_builder.runner import BuildCfg, build_index
from index_builder.shards import Shard, ShardStore, work_dir
from llm2clip.bundle import load_bundle
from llm2clip.index import load_index

ROOT = Path(__file__).resolve().parents[2]


def vectors(folder: Path) -> np.ndarray:
    index = load_index(folder)
    try:
        return index.reconstruct_all()
    finally:
        index.close()


def assert_same_index(a: Path, b: Path) -> None:
    """Same rows (ids, uris, captions, meta, in order) and bitwise the same vectors."""
    assert db_rows(a) == db_rows(b)
    va, vb = vectors(a), vectors(b)
    assert va.shape == vb.shape and np.array_equal(va, vb)
    ma, mb = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    for key in ("count", "dim", "factory", "model_fingerprint"):
        assert ma[key] == mb[key]
    assert ma["build"]["skipped"] == mb["build"]["skipped"]


# --- the shard store alone -------------------------------------------------------------------------------------

def shard(n: int, dim: int = 3) -> Shard:
    emb = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    return Shard(emb, [(f"i{k}", "long") for k in range(n)], [Skip("bad", "missing", "no such file")])


def test_a_shard_round_trips_and_survives_reopening(tmp_path):
    store = ShardStore(tmp_path / "w", {"a": 1})
    assert not store.done(0)
    store.save(0, shard(4), sources="sig")
    loaded = ShardStore(tmp_path / "w", {"a": 1}).load(0)
    assert np.array_equal(loaded.embeddings, shard(4).embeddings) and loaded.embeddings.dtype == np.float32
    assert loaded.rows == shard(4).rows and loaded.skipped == shard(4).skipped
    again = ShardStore(tmp_path / "w", {"a": 1})
    assert again.done(0, "sig")
    assert not again.done(0, "other images")  # an image changed since: redo the shard
    assert not again.done(1)


def test_a_stale_key_discards_the_shards(tmp_path, caplog):
    store = ShardStore(tmp_path / "w", {"model_fingerprint": "a" * 64, "shard_size": 4})
    store.save(0, shard(4))
    store.save(1, shard(2))
    with caplog.at_level(logging.WARNING, logger="index_builder.shards"):
        other = ShardStore(tmp_path / "w", {"model_fingerprint": "b" * 64, "shard_size": 4})
    assert "discarding 2 shards" in caplog.text and "model_fingerprint" in caplog.text
    assert not other.done(0) and not other.done(1)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["key.json"]
    assert json.loads((tmp_path / "w" / "key.json").read_text())["model_fingerprint"] == "b" * 64


def test_a_half_written_shard_is_ignored(tmp_path):
    store = ShardStore(tmp_path / "w", {"a": 1})
    store.save(0, shard(4))
    store.save(1, shard(4))
    w = tmp_path / "w"
    # killed while writing shard 2's embeddings: only a temp file
    (w / "shard-00002.npy.tmp").write_bytes(b"\x93NUMPY half")
    # killed between shard 3's two renames: embeddings without the JSON that completes them
    (w / "shard-00003.npy").write_bytes((w / "shard-00000.npy").read_bytes())
    (w / "shard-00003.json.tmp").write_text('{"rows": [')
    # a shard whose embeddings do not match the sha256 its JSON names
    raw = bytearray((w / "shard-00001.npy").read_bytes())
    raw[-1] ^= 0xFF
    (w / "shard-00001.npy").write_bytes(bytes(raw))
    reopened = ShardStore(w, {"a": 1})
    assert not list(w.glob("*.tmp"))
    assert [reopened.done(n) for n in range(4)] == [True, False, False, False]


# --- builds ----------------------------------------------------------------------------------------------------

class FailingMapper(PixelMapper):
    """The pixel mapper, raising on its ``fail_at``-th call: a build that dies part way."""

    def __init__(self, size: int, fail_at: int) -> None:
        super().__init__(size)
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, pixels):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the build died here")
        return super().__call__(pixels)


def test_a_build_that_died_resumes_and_equals_a_clean_build(tiny_bundle, tmp_path, caplog, capsys):
    ds = make_dataset(tmp_path / "ds", 18)
    size = load_bundle(tiny_bundle).preprocess.size
    cfg = BuildCfg(batch_size=2, shard_size=4, progress=False)
    clean = build_index(ds, tiny_bundle, tmp_path / "clean", "image", cfg, mapper=PixelMapper(size))
    assert clean["build"]["shards"] == {"size": 4, "count": 5, "resumed": 0}
    assert not work_dir(tmp_path / "clean").exists()

    target = tmp_path / "idx"
    # shards of 4 items, batches of 2: the 6th batch is the first of shard 2
    with pytest.raises(RuntimeError, match="died"):
        build_index(ds, tiny_bundle, target, "image", cfg, mapper=FailingMapper(size, fail_at=6))
    assert not target.exists()
    assert sorted(p.name for p in work_dir(target).glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]

    mapper = FailingMapper(size, fail_at=-1)
    with caplog.at_level(logging.WARNING, logger="index_builder.runner"):
        resumed = build_index(ds, tiny_bundle, target, "image", replace(cfg, progress=True), mapper=mapper)
    assert "resuming: 2 of 5 shards done" in caplog.text
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert "| 8/18 " in bar[0] and "| 18/18 " in bar[-1]  # the bar starts at the items of the shards done
    assert mapper.calls == 5  # shards 2, 3 and 4: 2 + 2 + 1 batches
    assert resumed["build"]["shards"] == {"size": 4, "count": 5, "resumed": 2}
    assert not work_dir(target).exists()
    assert_same_index(target, tmp_path / "clean")


def test_a_changed_image_redoes_its_shard(tiny_bundle, tmp_path):
    ds = make_dataset(tmp_path / "ds", 8)
    size = load_bundle(tiny_bundle).preprocess.size
    cfg = BuildCfg(batch_size=4, shard_size=4, progress=False)
    target = tmp_path / "idx"
    with pytest.raises(RuntimeError):
        build_index(ds, tiny_bundle, target, "image", cfg, mapper=FailingMapper(size, fail_at=2))
    # shard 0 is done; then its first image is replaced
    Image.new("RGB", (56, 72), (0, 200, 0)).save(ds.root / "img/0.png")
    os.utime(ds.root / "img/0.png", ns=(1, 1))  # a new mtime even on a coarse-clock file system
    manifest = build_index(ds, tiny_bundle, target, "image", cfg, mapper=PixelMapper(size))
    assert manifest["build"]["shards"]["resumed"] == 0
    build_index(ds, tiny_bundle, tmp_path / "clean", "image", cfg, mapper=PixelMapper(size))
    assert_same_index(target, tmp_path / "clean")


def test_another_setting_starts_over(tiny_bundle, tmp_path, caplog):
    ds = make_dataset(tmp_path / "ds", 8)
    target = tmp_path / "idx"
    cfg = BuildCfg(captions=("long",), shard_size=4, text_chunk=2, progress=False, threads=1)
    build_index(ds, tiny_bundle, target, "text", replace(cfg, keep_shards=True))
    with caplog.at_level(logging.WARNING):
        manifest = build_index(ds, tiny_bundle, target, "text", replace(cfg, captions=("short",)))
    assert "discarding 2 shards" in caplog.text and "captions" in caplog.text
    assert manifest["build"]["shards"]["resumed"] == 0 and manifest["build"]["captions"] == ["short"]
    assert [r[4] for r in db_rows(target)] == ["short"] * 8


# --- the command, killed -----------------------------------------------------------------------------------------

def start_build(model: Path, data: Path, out: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "llm2clip_cli.main", "index", "build", "--model", str(model), "--data", str(data),
            "--out", str(out), "--shard-size", "4", "--batch-size", "2", "--threads", "1", "--workers", "1",
            "--captions", "all", "--precision", "fp32", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def kill_after(proc: subprocess.Popen, folder: Path, shards: int, timeout: float = 180) -> int:
    """SIGKILL ``proc`` as soon as ``folder`` holds ``shards`` finished shards; returns how many it held then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the build ended (rc {proc.returncode}) before it could be killed: {proc.stderr.read()}")
        done = len(list(folder.glob("shard-*.json")))
        if done >= shards:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return done
        time.sleep(0.002)
    proc.kill()
    pytest.fail("no shards appeared")


@pytest.mark.slow
def test_killed_build_resumes_to_the_clean_index(tiny_bundle, tmp_path):
    """Killed with SIGKILL during the image index, then again during the caption index, the command run a third
    time writes bitwise the indexes of a clean run, and embeds only what the killed runs left undone."""
    data = make_dataset(tmp_path / "ds", 160).root
    out = tmp_path / "out"
    held = kill_after(start_build(tiny_bundle, data, out), out / "image.partial", 3)
    assert not (out / "image").exists() and 3 <= held < 40
    # second run: the image shards are resumed; killed again once captions are being embedded
    kill_after(start_build(tiny_bundle, data, out), out / "text.partial", 3)
    assert (out / "image").is_dir() and (out / "image.partial").is_dir() and not (out / "text").exists()
    third = start_build(tiny_bundle, data, out)
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err
    assert "resuming: 40 of 40 shards done" in err and "resuming: " in err.split("40 of 40")[1]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["image", "text"]

    clean = start_build(tiny_bundle, data, tmp_path / "clean")
    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err
    for modality in ("image", "text"):
        assert_same_index(out / modality, tmp_path / "clean" / modality)
    text = json.loads((out / "text" / "manifest.json").read_text())
    assert text["count"] == 320 and 3 <= text["build"]["shards"]["resumed"] < 40
