"""Argument types shared by the components' command lines."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """argparse type: an integer of at least 1, with a message that says which rule was broken."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n
