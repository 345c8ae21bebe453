"""Research apart from the pipeline: the paper's reproduction (`llm2clip repro`), its report, and the probes
run on its outputs (`python -m research.<probe> --help`). The pipeline (llm2clip, training, index_builder,
service) never imports this package."""
