"""Layer 5, models: resolving a model name to a family and a preset or directory, loading and saving
(:mod:`.loading`), transformers argument renames (:mod:`.hfcompat`), memory planning (:mod:`.memory`),
export (:mod:`.export`) and the tiny-tokenizer builder presets use.
"""
