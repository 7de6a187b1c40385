"""Layer 6, data: readers and format detection (:mod:`.readers`), mixtures (:mod:`.mixing`), the token
cache and stores (:mod:`.cache`, :mod:`.tokenstore`, :mod:`.indexed`), Example -> ids (:mod:`.encoding`),
batches (:mod:`.collate`) and the job's data preparation (:mod:`.prepare`).
"""
