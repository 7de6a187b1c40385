"""Layer 1, the process: torch CPU-thread policy (:mod:`.threads`) and warning/verbosity control (:mod:`.quiet`).

Imports nothing of lmforge but :mod:`lmforge.errors`.
"""
