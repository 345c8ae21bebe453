"""Index builder: a corpus -> FAISS index bundles, as a reader -> mapper -> writer pipeline.

Uses llm2clip/ only, never training/ or service/.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BuildCfg", "build_index", "build_indexes", "run_pipeline"]


def __getattr__(name: str) -> Any:
    # lazy: `llm2clip --help` imports index_builder.cli, and the runner pulls numpy, PIL and torch
    if name in __all__:
        from index_builder import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'index_builder' has no attribute {name!r}")
