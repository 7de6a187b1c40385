"""Layer 9, training: the job's result and pre-flight checks (:mod:`.job`), taking and finishing a run
directory (:mod:`.runstart`), the pipeline to ``transformers.Trainer`` (:mod:`.pipeline`), generation
metrics during training (:mod:`.evalgen`) and the multi-process worker entry (:mod:`.worker`).
"""
