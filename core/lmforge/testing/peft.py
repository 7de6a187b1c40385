"""``check_peft_method(name)``: the conformance suite for a PEFT-method plugin.

Built from tests/test_peft_methods.py, on a tiny preset (default ``tiny-llama``):

1. ``registered``: the method is in the registry; ``apply`` (and ``load``,
   ``save``, ``merge``, ``check`` when given) resolve to callables;
2. ``options``: every option has a help text, and the defaults (plus the
   ``options`` given) pass config validation;
3. ``family capability``: the preset's family does not refuse the method;
4. ``training``: a few steps train some but (unless ``saves="full"``) not all
   parameters and lower the validation loss;
5. ``reload``: the run directory reloads to the logits the trained model had;
6. ``batched generation``: a batch generates what each prompt generates alone.

Imports torch when called, not at import.
"""

from __future__ import annotations

import os
import tempfile

from lmforge.testing.errors import Report

RELOAD_TOL = 1e-5


def check_peft_method(name: str, *, preset: str = "tiny-llama", options: dict | None = None, lr: float = 1e-2,
                      steps: int = 12, workdir: str | None = None) -> Report:
    """Run the PEFT-method conformance suite; ``options`` are passed as ``peft_options``.

    Raises :class:`~lmforge.testing.ConformanceError` naming the first check that
    fails; returns a :class:`~lmforge.testing.Report`.
    """
    from lmforge.testing.helpers import single_torch_thread

    with single_torch_thread():
        return _check_peft_method(name, preset=preset, options=options, lr=lr, steps=steps, workdir=workdir)


def _check_peft_method(name: str, *, preset: str = "tiny-llama", options: dict | None = None, lr: float = 1e-2,
                      steps: int = 12, workdir: str | None = None) -> Report:
    """:func:`check_peft_method`'s body, on one torch thread."""
    from lmforge.plugins.descriptors import resolve_ref
    from lmforge.plugins.registry import get_registry

    report = Report("PEFT method", name)
    reg = get_registry()  # every step (loading, training) uses the process's registry
    with report.check("registered"):
        method = reg.peft_method(name)
        for hook in ("apply", "load", "save", "merge", "check", "model_load_kwargs"):
            ref = getattr(method, hook)
            if ref is not None:
                assert callable(resolve_ref(ref)), f"{hook}={ref!r} does not resolve to a callable"
    with report.check("options"):
        _check_options(method, reg, preset, options or {})
    with report.check("family capability"):
        found = reg.find_preset(preset)
        assert found is not None, f"no installed family has the preset {preset!r}"
        cap = found[0].capability(method.capability_key)
        assert cap.usable, f"family {found[0].name!r} refuses {method.capability_key!r}: {cap.reason}"

    from lmforge.testing.helpers import batched_vs_single, reload_logits, train_run, write_data

    with tempfile.TemporaryDirectory(prefix=f"lmforge-check-{name}-") as tmp:
        work = workdir or tmp
        data = write_data(os.path.join(work, "data"))
        with report.check("training"):
            run = train_run(preset, name, os.path.join(work, "run"), data, lr=lr, steps=steps,
                            peft_options=dict(options or {}))
            params = run.result.params
            assert params["trainable_params"] > 0, "no parameter trains"
            if method.saves != "full":
                assert params["trainable_params"] < params["total_params"], (
                    f"every parameter trains, but the method saves {method.saves!r}")
            before, after = run.result.eval_loss_before, run.result.eval_loss_after
            assert after < before, f"{steps} steps (lr {lr}) took the eval loss {before:.3f} -> {after:.3f}"
        with report.check("reload"):
            diff = float((reload_logits(run) - run.saved_logits).abs().max())
            assert diff <= RELOAD_TOL, f"the reloaded run's logits differ from the trained model's by {diff:.2e}"
        with report.check("batched generation"):
            batched, single = batched_vs_single(run.run_dir)
            assert batched == single, f"batched generation {batched} != one by one {single}"
    return report


def _check_options(method, reg, preset: str, options: dict) -> None:
    from lmforge.config.schema import validate

    for opt in method.options:
        assert opt.help, f"option {opt.name!r} has no help text (lmforge peft-methods and the docs show it)"
    cfg = {"model": preset, "data": {"train_file": "train.jsonl"}, "peft": {"method": method.name, **options}}
    validate(cfg, reg)  # the defaults (plus ``options``) make a valid job; raises ConfigError naming peft.OPTION
