"""Training, evaluation and export of LLM2CLIP checkpoints (uses llm2clip/, never index_builder/ or service/)."""
