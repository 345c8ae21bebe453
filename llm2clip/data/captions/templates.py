"""Every phrasing a long caption draws from: change a caption's wording here.

Each tuple is a set of alternatives, one drawn per use. The number of alternatives in a tuple is
part of the corpus (a draw picks among them), so adding one changes the captions of every seed.
Placeholders: {number} / {Number} (the object count in words), {colour}, {a_colour} ("a" or "an"
before the colour), {texture}, {background} (a drawn BACKGROUND_PHRASES), {things} ("item(s)").
"""

from __future__ import annotations

# -- the opening and the background

BACKGROUND_PHRASES = (
    "a {texture} {colour} background",
    "{a_colour} {colour}, {texture} background",
    "a {texture} background in {colour}",
)
INTRO_ONE = ("A single item is shown.", "The picture holds one item.", "There is only one item here.")
INTRO_ONE_ON = ("A single item is shown on {background}.", "The picture holds one item on {background}.")
INTRO_MANY = (
    "{Number} items are laid out on a three by three grid.",
    "The picture shows {number} items.",
    "{Number} items appear in this image, each in its own cell of a 3 x 3 grid.",
)
INTRO_MANY_ON = ("{Number} items are shown on {background}.", "The picture shows {number} items on {background}.")
BACKGROUND_SENTENCES = (
    "The background is {texture} {colour}.",
    "Everything sits on {background}.",
    "Behind the {things} is {background}.",
)
# the count, for a caption that does not open with it
CLOSING_ONE = ("In all, the picture holds one item.", "That makes one item in all.")
CLOSING_MANY = ("In all, there are {number} items.", "Altogether the picture holds {number} items.")
TEXTURE_DETAIL = {
    "plain": "The {c} background is a flat colour with no pattern.",
    "striped": "The background stripes run horizontally, alternating {c} with a darker {c}.",
    "dotted": "Darker {c} dots are spread over the background in a regular pattern.",
    "checkered": "The background squares alternate between {c} and a darker {c}.",
}
GRID_SENTENCES = (
    "The canvas is divided into a three by three grid, with at most one item in each cell.",
    "The picture is split into nine equal cells, three rows by three columns.",
)
ALONE = "No other item appears in the picture."

# -- objects

SIZE_WORDS = {"small": ("small",), "medium": ("medium-sized", "medium"), "large": ("large",)}
ORIENTATION_PREDICATES = {
    "upright": ("upright", "standing upright", "shown upright"),
    "upside down": ("upside down", "turned upside down", "flipped upside down"),
    "mirrored": ("mirrored", "shown mirrored", "mirrored horizontally"),
}
ORIENTATION_ADJECTIVES = {"upright": "upright", "upside down": "upside-down", "mirrored": "mirrored"}
CELL_PHRASES = (
    "in the {row} {col} cell",
    "in the {row} row and {col} column",
    "in the {col} column of the {row} row",
    "in the {row}-{col} cell",
)
OBJECT_TEMPLATES = (
    "{A_size} {colour} {noun} sits {cell}, {orient}.",
    "{Cell}, there is {a_size} {colour} {noun} that is {orient}.",
    "{A_colour} {noun}, {size} and {orient}, is placed {cell}.",
    "{Cell} is {a_adj} {size} {colour} {noun}.",
    "You can see {a_size} {colour} {noun} {cell}; it is {orient}.",
    "There is {a_size}, {adj} {colour} {noun} {cell}.",
)
# attributes a referring expression names, fewest first: the first that no distractor shares is used
REFERRING_KEYS = (("colour", "class"), ("size", "colour", "class"), ("size", "colour", "class", "orientation"))

# -- relations between two objects

RELATION_TEMPLATES = (
    "{A} is {rel} {b}.",
    "{A} appears {rel} {b}.",
    "Looking at the layout, {a} is {rel} {b}.",
    "{B} lies {inv} {a}.",  # the inverse: b is the subject
)
