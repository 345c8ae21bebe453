"""Startup: what the lifespan loads, and what it refuses to serve."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_helpers import draw_shape

from llm2clip.errors import BundleError, SettingError
from llm2clip.index import IndexWriter, Record
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def foreign_index(tmp_path_factory):
    """An image index built by some other model (another fingerprint), same dim."""
    target = tmp_path_factory.mktemp("foreign") / "image_index"
    writer = IndexWriter(target, "image", 32, "f" * 64)
    vectors = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    writer.add(vectors, [Record(id=str(i), uri=None, caption=None) for i in range(3)])
    writer.write()
    return target


def start(settings: Settings) -> None:
    with TestClient(create_app(settings)):
        pass


def test_index_of_another_model_is_refused_with_rebuild(make_settings, foreign_index):
    with pytest.raises(BundleError, match="rebuild") as info:
        start(make_settings(image_index=foreign_index))
    assert "ffffffffffff" in str(info.value)


def test_index_given_as_the_wrong_modality_is_refused(make_settings, indexes):
    with pytest.raises(SettingError, match="is a text index.*LLM2CLIP_TEXT_INDEX") as info:
        start(make_settings(image_index=indexes[1], text_index=None))
    assert info.value.setting == "text_index"


def test_missing_model_names_the_setting(make_settings, tmp_path):
    with pytest.raises(SettingError, match="LLM2CLIP_MODEL") as info:
        start(make_settings(model=None))
    assert info.value.setting == "model"
    with pytest.raises(BundleError, match="does not exist"):
        start(make_settings(model=tmp_path / "no-bundle"))


def test_model_without_indexes_still_embeds(make_settings):
    with TestClient(create_app(make_settings(image_index=None, text_index=None))) as c:
        assert c.get("/readyz").json()["indexes"] == {"image": None, "text": None}
        assert c.post("/embed", json={"texts": ["a"]}).status_code == 200
        assert c.post("/search", json={"text": "a"}).status_code == 503


def test_corpus_root_setting_overrides_the_manifest(make_settings, tmp_path):
    (tmp_path / "images").mkdir()
    draw_shape("blue", "circle", side=20).save(tmp_path / "images" / "00_red_circle.png")
    with TestClient(create_app(make_settings(corpus_root=tmp_path))) as c:
        r = c.get("/items/images/00_red_circle.png")
        assert r.status_code == 200
        assert r.content == (tmp_path / "images" / "00_red_circle.png").read_bytes()


def test_settings_from_the_environment(monkeypatch, tiny_bundle):
    monkeypatch.setenv("LLM2CLIP_MODEL", str(tiny_bundle))
    monkeypatch.setenv("LLM2CLIP_MAX_K", "7")
    monkeypatch.setenv("LLM2CLIP_BATCH__QUEUE_SIZE", "9")
    monkeypatch.setenv("LLM2CLIP_VERIFY_BUNDLES", "false")
    s = Settings()
    assert (s.model, s.max_k, s.batch.queue_size, s.verify_bundles) == (tiny_bundle, 7, 9, False)
    assert s.batch.batch_size == 32 and s.host == "127.0.0.1" and s.port == 8000
    assert Settings(max_k=3).max_k == 3  # arguments win over the environment
    monkeypatch.setenv("LLM2CLIP_MAX_K", "0")
    with pytest.raises(ValueError, match="max_k"):
        Settings()


def test_pil_pixel_guard_is_restored_after_shutdown(make_settings):
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    with TestClient(create_app(make_settings(max_image_pixels=12345))):
        assert Image.MAX_IMAGE_PIXELS == 12345
    assert Image.MAX_IMAGE_PIXELS == before


def test_index_device_gpu_without_a_gpu_is_refused_and_auto_falls_back(make_settings, indexes):
    from llm2clip.index import gpu_count, load_index

    if gpu_count() > 0:
        pytest.skip("this FAISS build sees a GPU: bench/device_check.sh covers that path")
    with pytest.raises(BundleError, match="sees no GPU.*faiss-gpu"):
        start(make_settings(index_device="gpu"))
    index = load_index(indexes[0], device="auto")
    try:
        assert index.device == "cpu"
        assert index.search(index.reconstruct_all()[:1], 1)[1][0, 0] == 0
    finally:
        index.close()
    with pytest.raises(ValueError, match="auto, cpu or gpu"):
        load_index(indexes[0], device="tpu")
