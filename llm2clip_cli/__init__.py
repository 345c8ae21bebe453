"""The `llm2clip` console script: one subcommand group per component."""
