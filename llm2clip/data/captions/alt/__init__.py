"""The alt caption grammar: a scene's long caption stated as a different writer would, for training diversity.

It states every fact of the own long caption (each object's class, colour, size, orientation and square, the
background's colour and texture, the count, and for two or more objects at least one relation) in other
sentence orders and constructions. It was written apart from the evaluation-only grammar and reads nothing
of it. ``phrasing`` holds the words and sentences, ``relations`` the relations, ``caption`` the order.
"""

from llm2clip.data.captions.alt.caption import MAX_WORDS, MIN_WORDS, alt_caption

__all__ = ["MAX_WORDS", "MIN_WORDS", "alt_caption"]
