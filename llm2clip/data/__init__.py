"""Dataset formats: the items.jsonl folder of DESIGN.md, and the scene corpus generator."""

from llm2clip.data.dataset import Dataset, Item, read_dataset, write_items

__all__ = ["Dataset", "Item", "read_dataset", "write_items"]
