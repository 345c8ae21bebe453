"""The unseen caption style: a second, independent caption grammar, used only to evaluate.

The training generator (``captions.long`` and ``captions.short``) never phrases a caption this way:
``vocabulary`` holds other nouns for the classes, other words for sizes, orientations, cells,
relations and textures and other sentence shapes; ``plan`` draws every choice of a caption before a
fact is read; ``sentences`` writes them; ``compose`` orders them (count, background or relations
first; objects row by row, by colour, by kind or shuffled) and fills them to the own grammar's
lengths; ``corpus`` restyles a scene corpus's items from the scene graphs in their meta.

A model that learned the scenes scores about the same on both styles; one that learned the own
grammar's templates does not.
"""

from llm2clip.data.captions.unseen.compose import UnseenCaptions, short_caption, unseen_captions
from llm2clip.data.captions.unseen.corpus import STYLE, restyle_items, twin_groups
from llm2clip.data.captions.unseen.plan import Plan, draw_plan

__all__ = ["STYLE", "Plan", "UnseenCaptions", "draw_plan", "restyle_items", "short_caption", "twin_groups",
           "unseen_captions"]
