"""Captions of a scene graph: long ones that state every fact, short ones that name count and categories.

``templates`` holds the wording, ``segments`` builds one sentence of each kind, ``long`` orders
them to a length.
"""

from llm2clip.data.captions.long import (
    LATE_TOKEN,
    MAX_TOKENS,
    MIN_TOKENS,
    LongCaption,
    TokenCounter,
    default_token_counter,
    long_caption,
)
from llm2clip.data.captions.segments import StatedRelation
from llm2clip.data.captions.short import short_caption

__all__ = [
    "LATE_TOKEN",
    "MAX_TOKENS",
    "MIN_TOKENS",
    "LongCaption",
    "StatedRelation",
    "TokenCounter",
    "default_token_counter",
    "long_caption",
    "short_caption",
]
