"""The inference runtime comes from the `cpu` or `gpu` extra: without it, a command says which to install
instead of failing with an ImportError deep inside index loading or encoder startup."""

from __future__ import annotations

import sys

import pytest

from llm2clip.errors import LLM2CLIPError, require_runtime


@pytest.mark.parametrize("module", ["faiss", "onnxruntime"])
def test_a_missing_runtime_names_the_extra(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like to import
    with pytest.raises(LLM2CLIPError, match=r"llm2clip-retrieval\[cpu\].*\[gpu\]"):
        require_runtime(module)


def test_an_installed_runtime_is_returned():
    assert require_runtime("faiss").IndexFlatIP is not None


def test_a_broken_dependency_of_the_runtime_is_not_hidden(monkeypatch, tmp_path):
    """Only the runtime's own absence gets the hint; an ImportError from inside it is the real error."""
    (tmp_path / "fake_runtime.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match="not_a_module_anywhere"):
        require_runtime("fake_runtime")
