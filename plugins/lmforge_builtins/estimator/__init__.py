"""The built-in ``analytic`` memory estimator (pure Python; see docs/memory.md).

- :mod:`.params`: every parameter tensor of the model and of the PEFT wrapper, with
  shape, dtype and whether it trains (exact counts and bytes);
- :mod:`.graph` and :mod:`.decoder`: a symbolic replay of the forward pass that
  records which tensors autograd saves (activations, by storage, as PyTorch does);
- :mod:`.zero`: DeepSpeed ZeRO partitioning arithmetic (stages 0-3, offload);
- :mod:`.analytic`: puts them together into a :class:`lmforge.modeling.memory.MemoryBreakdown`
  and models the step's peak;
- :mod:`.profiles`: the per-family details (from each family's
  ``ModelFamily.estimator_profile``) merged into the arch before pricing.

The torch-side ground truth the tests and the benchmark compare against is
``tests/estimator_measure.py`` (not shipped).
"""
