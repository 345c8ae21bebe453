"""Stage 1 of LLM2CLIP: caption-contrastive (CC) fine-tuning of the LLM text encoder (`llm2clip train text`).

Recipe (LLM2Vec, as LLM2CLIP uses it): the decoder LLM gets bidirectional attention and mean pooling
(``LLMEncoder``); optional MNTP (masked next-token prediction) adapts it to bidirectional attention;
then LoRA on the attention and MLP projections is trained with a supervised contrastive loss where two
captions of the same scene are positives and every other caption in the micro-batch is a negative.

Where each part lives, and the choices made where the paper and LLM2Vec leave room:
- ``config``: the recipe (``Stage1Cfg``) and the names of the files a run writes;
- ``losses``: the contrastive loss and MNTP masking;
- ``views``: the caption pools (paraphrases, near twins as hard negatives) and which views make up a
  micro-batch;
- ``batches``: a micro-batch's loss in each phase (gradient accumulation);
- ``lora``: the models and their LoRA adapters, and the speed settings that change how a step is computed but
  not what it computes (frozen projections in bf16, norm outputs rounded to bf16 once; LoRA on the top
  layers only is an option that does change the recipe); ``batches.length_chunks`` cuts a micro-batch into
  calls of similar length (bench/bench_stage1.py measures each against the original step);
- ``loop``: a phase's optimizer loop; ``checkpoint``: resuming and writing the merged model;
- ``train``: ``train_text``, the run from caption pools to the merged model and ``stage1.json``.

The package imports none of them: ``config`` stays torch-free, so the command line's ``--help`` does not load
torch. Import from the modules.
"""
