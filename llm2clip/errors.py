"""Domain errors with a message that tells the user what to do."""


class LLM2CLIPError(Exception):
    """Base class: the message is safe to show to a user."""


class BundleError(LLM2CLIPError):
    """A model or index bundle is missing, corrupt or does not match."""


class DatasetError(LLM2CLIPError):
    """A dataset folder is missing or malformed."""


class DefaultModelError(LLM2CLIPError):
    """An offline default model's package is not installed."""


class ConfigError(LLM2CLIPError, ValueError):
    """A model configuration that cannot be built (an image size the backbone cannot take, a wrong count)."""


class SettingError(LLM2CLIPError):
    """A setting is missing or wrong. ``setting`` is its name in the settings (``model``, ``text_index``), so
    that a command line can name the flag that sets it."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


RUNTIME_HINT = ("install the inference runtime: pip install 'llm2clip-retrieval[cpu]' "
                "(or '[gpu]' on a CUDA 12 host)")


def require_runtime(module: str):
    """Import ``onnxruntime`` or ``faiss``, which come from the `cpu` or `gpu` extra, with a message that says
    which extra to install when neither is there."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name != module:
            raise
        raise LLM2CLIPError(f"{module} is not installed: {RUNTIME_HINT}") from None
