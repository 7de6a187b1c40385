"""Layer 8, inference: :class:`~.generation.Completion` (one ``generate`` call for rows with their own
sampling), the serving worker (:mod:`.batching`) and HTTP server (:mod:`.serve`, :mod:`.webui`), the
remote client (:mod:`.remote`), batch prediction (:mod:`.predict`) and metrics (:mod:`.metrics`).
"""
