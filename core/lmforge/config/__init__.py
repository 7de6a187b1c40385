"""Layer 3, the job's configuration: YAML + ``--set`` overrides validated against the schema with key
paths and did-you-mean (:mod:`.schema`), and the ``TrainingArguments`` keywords (:mod:`.trainargs`).
"""
