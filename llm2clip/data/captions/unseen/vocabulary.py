"""Every word and construction of the unseen caption style: written apart from ``captions.templates``.

The training generator never uses these: other nouns for the classes, other words for sizes,
orientations, cells, relations and textures, other sentence shapes. Colour names stay (the rendered
palette is fixed and has no honest synonyms); the constructions around them change ("teal-coloured",
"in teal"). Each tuple is a set of alternatives, one drawn per use; a checker (the tests') reads the
facts back through the same tables, so each phrase names one value only.

Placeholders: {noun} (a class word, with its article where the template says {a_noun}), {colour},
{size}, {orient} (an orientation predicate), {adj} (an orientation adjective), {cell} (a cell phrase
that takes "in the"/"at the" itself), {n} / {N} (the count in words or digits), {pieces}.
"""

from __future__ import annotations

# -- classes: (singular, plural) per synonym; none holds an own-grammar noun ("shirt", "sandal", "bag", ...)
CLASS_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "t-shirt": (("tee", "tees"), ("crew-neck top", "crew-neck tops"), ("short-sleeved top", "short-sleeved tops")),
    "trouser": (("pair of slacks", "pairs of slacks"), ("pair of pants", "pairs of pants"),
                ("pair of chinos", "pairs of chinos")),
    "pullover": (("jumper", "jumpers"), ("sweater", "sweaters"), ("knitted sweater", "knitted sweaters")),
    "dress": (("frock", "frocks"), ("gown", "gowns"), ("sundress", "sundresses")),
    "coat": (("jacket", "jackets"), ("overcoat", "overcoats"), ("parka", "parkas")),
    "sandal": (("flip-flop", "flip-flops"), ("slingback", "slingbacks"), ("slide", "slides")),
    "shirt": (("blouse", "blouses"), ("button-up", "button-ups"), ("button-down", "button-downs")),
    "sneaker": (("trainer", "trainers"), ("running shoe", "running shoes"), ("sports shoe", "sports shoes")),
    "bag": (("handbag", "handbags"), ("purse", "purses"), ("tote", "totes")),
    "ankle boot": (("bootie", "booties"), ("short boot", "short boots"), ("low boot", "low boots")),
}

# -- sizes: an adjective, and a phrase that follows the noun
SIZE_ADJECTIVES = {"small": ("tiny", "little", "compact"), "medium": ("mid-sized", "middling", "average-sized"),
                   "large": ("big", "oversized", "bulky")}
SIZE_PHRASES = {"small": ("drawn tiny", "at its smallest scale"), "medium": ("of mid size", "at an in-between scale"),
                "large": ("drawn big", "at its biggest scale")}

# -- orientations: a predicate ("it is ...") and an adjective ("the inverted tee")
ORIENT_PREDICATES = {
    "upright": ("the right way up", "right side up", "in its normal orientation"),
    "upside down": ("inverted", "turned on its head", "flipped top to bottom"),
    "mirrored": ("flipped left to right", "reversed left to right", "shown as a mirror image"),
}
ORIENT_ADJECTIVES = {"upright": "unflipped", "upside down": "inverted", "mirrored": "reversed"}

# -- cells: (row, col) -> phrases that read after "in the" / "at the"
CELL_WORDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("top", "left"): ("upper-left corner", "top left-hand corner", "first slot of row one"),
    ("top", "center"): ("middle of the top row", "upper middle slot", "second slot of row one"),
    ("top", "right"): ("upper-right corner", "top right-hand corner", "third slot of row one"),
    ("middle", "left"): ("middle of the left column", "centre-left slot", "first slot of row two"),
    ("middle", "center"): ("centre of the grid", "dead centre", "second slot of row two"),
    ("middle", "right"): ("middle of the right column", "centre-right slot", "third slot of row two"),
    ("bottom", "left"): ("lower-left corner", "bottom left-hand corner", "first slot of row three"),
    ("bottom", "center"): ("middle of the bottom row", "lower middle slot", "second slot of row three"),
    ("bottom", "right"): ("lower-right corner", "bottom right-hand corner", "third slot of row three"),
}

# -- relations, by (row step, column step) of the subject from the object: -1 up/left, +1 down/right
RELATION_WORDS: dict[tuple[int, int], tuple[str, ...]] = {
    (-1, 0): ("straight over", "up the column from", "north of"),
    (1, 0): ("straight under", "down the column from", "south of"),
    (0, -1): ("left of", "on the left-hand side of", "west of"),
    (0, 1): ("right of", "on the right-hand side of", "east of"),
    (-1, -1): ("up and left of", "north-west of", "higher and further left than"),
    (-1, 1): ("up and right of", "north-east of", "higher and further right than"),
    (1, -1): ("down and left of", "south-west of", "lower and further left than"),
    (1, 1): ("down and right of", "south-east of", "lower and further right than"),
}
RELATION_TEMPLATES = (
    "{A} sits {rel} {b}.",
    "Relative to {b}, {a} is {rel} it.",
    "{A}: {rel} {b}.",
    "{A} is found {rel} {b}.",
)

# -- the background: texture words and sentences; {tex} before the noun, {with_tex} after it
TEXTURE_WORDS = {
    "plain": ("solid", "flat", "unpatterned"),
    "striped": ("stripy", "banded", "pinstriped"),
    "dotted": ("polka-dot", "spotted", "dotty"),
    "checkered": ("chequered", "checkerboard", "gingham"),
}
BACKDROP_WORDS = ("backdrop", "backing", "ground")
BACKGROUND_TEMPLATES = (
    "All of this rests on a {tex} {colour} {backdrop}.",
    "The {backdrop}: {tex}, in {colour}.",
    "Underneath the {pieces} lies a {colour}-coloured {tex} {backdrop}.",
    "As for the {backdrop}, it is {colour} and {tex}.",
)
TEXTURE_NOTES = {
    "plain": ("Apart from its {colour}, the {backdrop} carries no pattern at all.",),
    "striped": ("Across the {backdrop}, bands of {colour} take turns with bands of a deeper {colour}.",),
    "dotted": ("Deeper {colour} spots dot the {backdrop} at even spacing.",),
    "checkered": ("Squares of {colour} and of a deeper {colour} tile the {backdrop}.",),
}

# -- the count
PIECE_WORDS = ("pieces", "articles", "products")
COUNT_OPENINGS = (
    "Count: {n} {pieces}.",
    "This is a grid of nine slots holding {n} {pieces}.",
    "{N} {pieces} have been arranged here.",
)
COUNT_OPENINGS_ONE = ("Count: a lone piece.", "Just one piece has been placed here.", "This grid holds a single article.")
COUNT_CLOSINGS = ("That comes to {n} {pieces} altogether.", "So the total is {n} {pieces}.")
COUNT_CLOSINGS_ONE = ("So the grid holds only that one piece.", "That single piece is the whole content.")
DIGITS = ("0", "1", "2", "3", "4", "5", "6")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")

# -- how a caption orders its objects, and the sentence that says so (None: no such sentence)
ORDERS = {
    "reading": "Row by row, from the top:",
    "colour": "By colour:",
    "class": "By kind:",
    "shuffled": None,
}

# -- one object: every fact in one clause
OBJECT_TEMPLATES = (
    "At the {cell}: {a_size} {colour} {noun}, {orient}.",
    "{A_noun} in {colour}, {size_phrase}, occupies the {cell} and is {orient}.",
    "There's {a_size}, {colour}-coloured {noun} at the {cell}; {orient}, too.",
    "The {cell} is taken by {a_size} {noun} coloured {colour}, which is {orient}.",
    "{A_adj} {noun} ({colour}, {size}) has been put at the {cell}.",
    "{Colour}, {size} and {orient}: that is the {noun} at the {cell}.",
)

# -- fillers that make up a caption's length
GRID_NOTES = (
    "Nine equal slots make up the layout, three across and three down.",
    "The frame is cut into a grid of nine squares, three per row.",
)
EMPTY_TEMPLATES = ("Nothing occupies {cells}.", "Left vacant: {cells}.")
EMPTY_ONE_TEMPLATES = ("Nothing occupies {cells}.", "Left vacant: only {cells}.")
SOLO_NOTE = "It has the grid to itself."

# -- the short caption: at most SHORT_WORDS words
SHORT_TEMPLATES = (
    "{list} against a {tex} {colour} backdrop",
    "{colour} {tex} backdrop with {list}",
    "{N} {pieces} on {tex} {colour}: {list}",
)
SHORT_WORDS = 15
