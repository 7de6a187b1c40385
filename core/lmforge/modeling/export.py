"""``lmforge export RUN -o OUT --format transformers``: a run as a checkpoint plain transformers loads.

Adapter runs are merged first (the method's ``merge``). A family whose saved
layout is already transformers' native one (LLaMA, Bloom, MiniCPM, ...) is saved
with ``save_pretrained``; a family with its own layout registers
``ModelFamily.exporter`` to write the native one (GLM: ChatGLM2/3 and GLM-4 as
``GlmForCausalLM``, their tokenizers as ``tokenizer.json`` for ``PreTrainedTokenizerFast``),
or refuses, saying what loads it instead. The output never
needs ``trust_remote_code``: the export checks its ``config.json`` names an
architecture transformers has.
"""

from __future__ import annotations

import json
import os

from lmforge.errors import LmforgeError

FORMATS = ("transformers",)


def export_run(run_dir: str, output_dir: str, fmt: str = "transformers", dtype: str = "fp32", registry=None) -> str:
    """Write ``run_dir`` (a run or checkpoint) to ``output_dir`` in ``fmt``; returns ``output_dir``.

    Raises :class:`LmforgeError` for an unknown format, a method that cannot be
    merged, a family transformers cannot load natively, or ``output_dir == run_dir``.
    """
    from lmforge.plugins.descriptors import resolve_ref
    from lmforge.modeling.loading import family_of_run, load, read_run_config, torch_dtype
    from lmforge.plugins.registry import get_registry

    if fmt not in FORMATS:
        raise LmforgeError(f"--format: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if os.path.abspath(output_dir) == os.path.abspath(run_dir):
        raise LmforgeError("export: the output directory must differ from the run directory")
    from lmforge.runtime.quiet import configure_warnings, verbose

    configure_warnings()
    if not verbose():  # the weight loading/writing bars say nothing the user can act on
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    reg = registry or get_registry()
    family = family_of_run(run_dir, reg)
    run_cfg = read_run_config(run_dir) or {}
    method = reg.peft_method((run_cfg.get("peft") or {}).get("method", "full"))
    if method.load is not None and method.merge is None:
        raise LmforgeError(f"{run_dir}: runs of {method.name!r} cannot be merged into the base weights, "
                           "so they have no plain-transformers form; load the run with lmforge")
    model, tokenizer = load(run_dir, dtype="fp32", registry=reg)
    if method.load is not None:
        model = resolve_ref(method.merge)(model)
    model = model.to(torch_dtype(dtype))
    os.makedirs(output_dir, exist_ok=True)
    if family.exporter is not None:
        resolve_ref(family.exporter)(model, tokenizer, output_dir)
    else:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    _check_native(output_dir)
    from lmforge.runs.files import remove_peft_cards

    remove_peft_cards(output_dir)
    return output_dir


def _check_native(output_dir: str) -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    with open(os.path.join(output_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("auto_map") or cfg.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise LmforgeError(f"export: {cfg.get('model_type')!r} is not an architecture transformers has; "
                           "the family must register an exporter")
