"""What plugin authors test with: conformance checks per plugin kind and the helpers they are built from.

- :func:`check_family` (:mod:`lmforge.testing.family`): a model family's presets,
  encoder, chat template, training, save/reload, generation and declared capabilities;
- :func:`check_peft_method` (:mod:`lmforge.testing.peft`): a PEFT method's schema,
  training, save/reload and generation on a tiny preset;
- :func:`check_data_format` (:mod:`lmforge.testing.formats`): a data format's
  detection, conversion, errors and file round trip;
- helpers (:mod:`lmforge.testing.helpers`): ``write_data``, ``train_run``,
  ``reload_logits``, ``batched_vs_single``.

Each check raises :class:`ConformanceError` (an ``AssertionError``) naming the plugin
and the check that failed. Importing this package does not import torch; the checks
import it when they run.
"""

from lmforge.testing.errors import ConformanceError, Report
from lmforge.testing.family import check_family
from lmforge.testing.formats import check_data_format
from lmforge.testing.helpers import PROBE_TEXT, PROMPTS, Run, batched_vs_single, reload_logits, train_run, write_data
from lmforge.testing.peft import check_peft_method

__all__ = ["ConformanceError", "Report", "check_family", "check_peft_method", "check_data_format",
           "PROBE_TEXT", "PROMPTS", "Run", "write_data", "train_run", "reload_logits", "batched_vs_single"]
