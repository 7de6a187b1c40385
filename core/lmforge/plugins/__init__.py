"""Layer 2, the extension points: hook specs (:mod:`.hookspecs`), the descriptors plugins register
(:mod:`.descriptors`), the entry-point registry (:mod:`.registry`) and the chat-template renderer.

Importing it never imports torch.
"""
