"""Packed training without cross-sample attention.

Several tokenized examples share one row of ``max_length`` slots, so almost no
compute is spent on padding. Packing is only worth having if it changes nothing
but speed: every example must see exactly the tokens and positions it would see
alone. lmforge guarantees that in three places:

1. **Rows** (:func:`pack_lengths`, :func:`pack_features`): best-fit-decreasing bin
   packing of the encoded examples into rows of at most ``max_length`` tokens, or
   the groups an offline-packed file already holds (:func:`group_features`).
2. **Batches** (:class:`PackedCollator`, or a family's ``pack_collate``): positions
   restart at every example, the first label of every example is ``-100`` (it is
   never a prediction target, exactly as when the example is alone: the causal
   shift drops it), there is no ``attention_mask`` and ``use_cache=False``, and the
   example boundaries travel as ``cu_seq_lens_q/k`` + ``max_length_q/k`` (the
   keyword arguments transformers threads to flash-attention varlen).
3. **Attention** (:func:`segment_attention_forward`, registered with transformers
   as ``"lmforge_packed"``): causal SDPA run on each example's own slice of the
   row. There is no dense block-diagonal mask, and the masked-out blocks are never
   computed, so a packed row costs less attention work than the same row with
   plain causal attention. ``flash_attention_2`` (GPU) uses the same
   ``cu_seq_lens`` with varlen kernels; ``eager`` and ``flex_attention`` get
   transformers' block-diagonal masks from the restarting positions.

Before training starts, :func:`verify_no_cross_attention` runs two short packed
rows holding the same two examples in opposite orders and refuses to train if
either example's logits depend on its neighbour or its offset in the row, so a
family whose model ignores the packing inputs is caught, not silently trained.

Loss normalisation: the loss of a batch is the mean over every trainable
(label != -100) token in the batch (with gradient accumulation, over every such
token of the accumulated batch: transformers' ``num_items_in_batch``). This is
what an unpacked, padded run computes, so a packed batch and the same examples
run unpacked give the same loss and gradients.

Family hook: a family whose positions or masks are not the LLaMA/RoPE default
gives its encoder class (``ModelFamily.encoder``) a ``pack_collate(rows)`` method
(``rows`` is a list of lists of encoded features; it returns the batch dict), or
returns per-example ``position_ids`` from ``encode``. ``"lmforge_packed"`` is
only swapped in for models whose attention goes through transformers' attention
interface; a family that builds its own packed masks for such a model sets the
encoder class attribute ``packed_attention = "model"``. See docs/packing.md.

At import time this module needs only the standard library and click (for
``lmforge data pack``); torch and transformers are imported where used.
"""

from __future__ import annotations

from lmforge.packing.plan import *  # noqa: F401,F403
from lmforge.packing.collate import *  # noqa: F401,F403
from lmforge.packing.attention import *  # noqa: F401,F403
from lmforge.packing.job import *  # noqa: F401,F403
