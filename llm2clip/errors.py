"""Domain errors with a message that tells the user what to do."""


class LLM2CLIPError(Exception):
    """Base class: the message is safe to show to a user."""


class BundleError(LLM2CLIPError):
    """A model or index bundle is missing, corrupt or does not match."""


class DatasetError(LLM2CLIPError):
    """A dataset folder is missing or malformed."""


class DefaultModelError(LLM2CLIPError):
    """An offline default model's package is not installed."""
