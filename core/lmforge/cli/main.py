"""The ``lmforge`` command line.

Kept light on purpose: this module imports click and the plugin host only.
``--help``, ``plugins``, ``models`` (and the estimator's ``estimate``) never import
torch; commands that need it import it inside their bodies.
"""

from __future__ import annotations

import json
import os
import sys

import click

from lmforge import __version__
from lmforge.cli.inference import COMMANDS as INFERENCE_COMMANDS
from lmforge.cli.inference import make_params, sampling_options
from lmforge.errors import LmforgeError, user_errors
from lmforge.runtime.threads import click_option as threads_option
from lmforge.runtime.threads import request as request_threads


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lmforge")
def cli() -> None:
    """lmforge: fine-tune LLaMA, GLM/ChatGLM, Bloom, CPM and other LLMs through plugins."""


# ------------------------------------------------------------------ plugins
@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list, one object per distribution")
@click.option("--errors", "show_errors", is_flag=True, help="print tracebacks of broken plugins")
@user_errors
def plugins_cmd(as_json: bool, show_errors: bool) -> None:
    """List installed plugin distributions, their status and what they registered."""
    from lmforge.plugins.registry import get_registry

    from lmforge.plugins.registry import slow_plugin_seconds

    reg = get_registry()
    rows = reg.plugins_json()
    if as_json:
        keys = ("name", "version", "status", "error", "hooks", "registered", "conflicts", "load_seconds")
        out = [{k: r[k] for k in keys} | {"modules": r["modules"]} for r in rows]
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    slow = slow_plugin_seconds()
    for r in rows:
        colour = {"ok": "green", "disabled": "yellow"}.get(r["status"], "red")
        status = click.style(r["status"], fg=colour)
        click.echo(f"{r['name']} {r['version']}  [{status}]  loaded in {r['load_seconds'] * 1000:.0f} ms")
        for kind, names in r["registered"].items():
            click.echo(f"    {kind.replace('_', ' '):18} {', '.join(names)}")
        if r["error"]:
            click.echo(f"    error: {r['error']}")
        for c in r["conflicts"]:
            click.echo(f"    conflict: {c}")
        if r["load_seconds"] > slow:
            click.echo(f"    warning: slow to load ({r['load_seconds']:.1f} s, over {slow} s); every lmforge command "
                       f"waits for it (LMFORGE_DISABLE_PLUGINS={r['name']} skips it)")
    if show_errors:
        for rec in reg.records:
            tb = getattr(rec, "traceback", None)
            if tb:
                click.echo(f"\n--- {rec.label}\n{tb}")


# ------------------------------------------------------------------ models
@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--family", default=None, help="only this family")
@user_errors
def models_cmd(as_json: bool, family: str | None) -> None:
    """List model families, their presets and capability maps."""
    from lmforge.plugins.registry import get_registry

    reg = get_registry()
    fams = [reg.family(family)] if family else reg.families()
    out = []
    for fam in fams:
        rec = reg.plugin_of("model_families", fam.name)
        out.append({
            "name": fam.name,
            "plugin": rec.distribution,
            "plugin_version": rec.version,
            "description": fam.description,
            "aliases": list(fam.aliases),
            "model_types": list(fam.model_types),
            "architectures": list(fam.architectures),
            "presets": [{"name": p.name, "tiny": p.tiny, "description": p.description} for p in fam.presets],
            "default_lora_targets": list(fam.default_lora_targets),
            # every key of the closed set: one the family does not declare shows as untested
            "capabilities": {k: v.to_json() for k, v in sorted(fam.capability_map().items())},
        })
    if as_json:
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    for f in out:
        click.echo(f"{f['name']}  ({f['plugin']} {f['plugin_version']})  {f['description']}")
        if f["model_types"]:
            click.echo(f"    model_types: {', '.join(f['model_types'])}")
        if f["presets"]:
            click.echo(f"    presets: {', '.join(p['name'] for p in f['presets'])}")
        caps = [f"{k}={v['status']}" for k, v in f["capabilities"].items()]
        if caps:
            click.echo(f"    capabilities: {', '.join(caps)}")
        for k, v in f["capabilities"].items():
            if v["status"] != "supported" and v["reason"]:
                click.echo(f"      {k}: {v['reason']}")


# ------------------------------------------------------------------ train
@cli.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (dotted path)")
@click.option("--model", default=None, help="preset name or checkpoint directory")
@click.option("--output-dir", "-o", default=None, help="output directory")
@click.option("--peft", default=None, help="PEFT method")
@click.option("--max-steps", type=int, default=None, help="train.max_steps")
@click.option("--max-length", type=int, default=None, help="max_length")
@click.option("--learning-rate", "--lr", type=float, default=None, help="train.learning_rate")
@click.option("--resume", is_flag=True, help="continue from the latest checkpoint in the output directory")
@click.option("--overwrite", is_flag=True, help="delete a previous run in the output directory first")
@click.option("--force-resume", is_flag=True, help="with --resume: continue even if the config changes the "
              "model, data, batch or PEFT settings of the saved run")
@click.option("--trust-remote-code", is_flag=True, help="allow code shipped with the checkpoint to run")
@click.option("--dry-run", is_flag=True, help="validate and print the resolved config, then stop")
@click.option("--launcher", "launcher_name", default=None, help="launcher.name (local, torchrun, deepspeed, slurm ...)")
@click.option("--nproc-per-node", type=int, default=None, help="launcher.nproc_per_node")
@click.option("--nnodes", type=int, default=None, help="launcher.nnodes")
@click.option("--node-rank", type=int, default=None, help="launcher.node_rank")
@click.option("--master-addr", default=None, help="launcher.master_addr")
@click.option("--master-port", type=int, default=None, help="launcher.master_port")
@click.option("--zero", type=click.IntRange(0, 3), default=None, help="launcher.zero (deepspeed): ZeRO stage")
@click.option("--submit", is_flag=True, help="slurm/kubernetes launchers: submit the job, not only write it")
@threads_option
@click.option("--verbose", is_flag=True, help="also show the libraries' deprecation warnings and notices")
@user_errors
def train_cmd(config, overrides, model, output_dir, peft, max_steps, max_length, learning_rate, resume, overwrite,
              force_resume, trust_remote_code, dry_run, launcher_name, nproc_per_node, nnodes, node_rank, master_addr,
              master_port, zero, submit, threads, verbose) -> None:
    """Train from a YAML CONFIG (see docs/config.md; several processes, nodes, DeepSpeed, Slurm:
    docs/distributed.md)."""
    from lmforge.config.schema import apply_launcher_env, apply_overrides, load_yaml, set_key, to_yaml
    from lmforge.config.spec import build_spec
    from lmforge.runtime.quiet import set_verbose

    set_verbose(verbose)
    raw = apply_overrides(load_yaml(config), list(overrides))
    for key, value in (("model", model), ("output_dir", output_dir), ("peft.method", peft),
                       ("train.max_steps", max_steps), ("max_length", max_length),
                       ("train.learning_rate", learning_rate), ("launcher.name", launcher_name),
                       ("launcher.nproc_per_node", nproc_per_node), ("launcher.nnodes", nnodes),
                       ("launcher.node_rank", node_rank), ("launcher.master_addr", master_addr),
                       ("launcher.master_port", master_port), ("launcher.zero", zero),
                       ("launcher.submit", True if submit else None), ("threads", threads)):
        if value is not None:
            set_key(raw, key, value)
    apply_launcher_env(raw, os.environ)
    if resume:
        set_key(raw, "train.resume_from_checkpoint", True)
    if overwrite:
        raw["overwrite"] = True
    if force_resume:
        raw["force_resume"] = True
    if trust_remote_code:
        raw["trust_remote_code"] = True
    # plugins/lmforge_version in a reused lmforge.yaml are provenance, not input
    raw.pop("plugins", None)
    raw.pop("lmforge_version", None)
    out_dir = raw.get("output_dir")
    lc = raw.get("launcher")
    node_rank = lc.get("node_rank") if isinstance(lc, dict) else None
    if not dry_run and isinstance(out_dir, str) and node_rank in (None, 0):
        # a second run into a busy directory is refused at once, before the train: checks import
        # transformers (seconds); the run itself takes the lock later (train.runstart)
        from lmforge.runs.rundir import refuse_if_locked

        refuse_if_locked(out_dir)
    # the one validation of the job: keys, plugin names, options and train: against TrainingArguments
    spec = build_spec(raw)
    from lmforge.plugins.registry import get_registry

    launcher = get_registry().launcher(spec.launcher.name)
    if dry_run:
        click.echo(to_yaml(spec.to_dict()))
        if launcher.launch is not None:  # schedulers: write and show the job script, do not submit
            _launch(spec, launcher, submit=False)
        return
    if launcher.in_process:
        from lmforge.train.pipeline import run_training

        res = run_training(spec)
        click.echo(json.dumps({"output_dir": res.output_dir, "global_step": res.global_step,
                               "train_loss": res.train_loss, "eval_loss_before": res.eval_loss_before,
                               "eval_loss_after": res.eval_loss_after}))
        return
    _launch(spec, launcher)


def _launch(spec, launcher, submit: bool | None = None) -> None:
    """Start the workers of a multi-process launcher (or hand the job to a scheduler's ``launch``)."""
    import subprocess

    from lmforge.config.schema import to_yaml
    from lmforge.plugins.descriptors import LaunchSpec, resolve_ref
    from lmforge.train.runstart import launch_workers_config

    start = None
    if launcher.launch is None and (spec.launcher.nnodes == 1 or spec.launcher.node_rank == 0):
        # checks, lock and --overwrite/--resume, held until the workers exit; on a multi-node job the
        # node-0 parent prepares the (shared) output_dir, the other nodes' parents only start workers
        start, cfg = launch_workers_config(spec)
        if start is None:
            return
    else:
        cfg = spec.to_dict()
    if submit is not None:
        cfg["launcher"]["submit"] = submit
    os.makedirs(cfg["output_dir"], exist_ok=True)
    if launcher.prepare is not None:  # e.g. train.deepspeed / train.fsdp for the workers' TrainingArguments
        cfg = resolve_ref(launcher.prepare)(cfg)
    path = os.path.join(cfg["output_dir"], "launch_config.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_yaml(cfg))
    lc = cfg["launcher"]
    launch = LaunchSpec(
        worker_argv=(sys.executable, "-m", "lmforge.train.worker", path),
        nproc_per_node=lc["nproc_per_node"], nnodes=lc["nnodes"], node_rank=lc["node_rank"],
        master_addr=lc["master_addr"], master_port=lc["master_port"],
        options={k: v for k, v in lc.items() if k not in LaunchSpec.__dataclass_fields__ and k != "name"},
    )
    if launcher.launch is not None:
        sys.exit(resolve_ref(launcher.launch)(launch, cfg, path))
    argv = launcher.command(launch)
    click.echo(f"[lmforge] launching: {' '.join(argv)}", err=True)
    env = dict(os.environ)
    if start is not None:
        env[start.env_key] = os.path.abspath(cfg["output_dir"])
    try:
        code = subprocess.call(argv, env=env)
    finally:
        if start is not None:
            start.release()
    sys.exit(code)


# ------------------------------------------------------------------ generate
@cli.command("generate")
@click.argument("model")
@click.argument("prompts", nargs=-1, required=True)
@click.option("--adapter", default=None, help="apply this adapter (or run directory) on top")
@sampling_options
@click.option("--raw", is_flag=True, help="do not apply the chat template")
@click.option("--json", "as_json", is_flag=True, help="print JSON results")
@click.option("--trust-remote-code", is_flag=True)
@threads_option
@user_errors
def generate_cmd(model, prompts, adapter, max_new_tokens, temperature, top_p, top_k, repetition_penalty, stop,
                 seed, raw, as_json, trust_remote_code, threads) -> None:
    """Generate from MODEL (run directory, checkpoint or preset) for each PROMPT (batched)."""
    from lmforge.inference.generation import Completion, Request

    request_threads(threads)
    params = make_params(max_new_tokens, temperature, top_p, top_k, repetition_penalty, stop, seed)
    comp = Completion(model, adapter=adapter, trust_remote_code=trust_remote_code, raw=raw or None)
    results = comp.run([Request(comp.encode(p), params) for p in prompts])
    if as_json:
        click.echo(json.dumps([{"prompt": p, "text": r.text, "finish_reason": r.finish_reasons[0]}
                               for p, r in zip(prompts, results)], ensure_ascii=False, indent=1))
        return
    for p, r in zip(prompts, results):
        if len(prompts) > 1:
            click.echo(f">>> {p}")
        click.echo(r.text)


for _command in INFERENCE_COMMANDS:
    cli.add_command(_command)
from lmforge.cli.data import data_group  # noqa: E402 - click only; each command imports what it needs
from lmforge.cli.export import export_cmd  # noqa: E402
from lmforge.cli.plugin import plugin_group  # noqa: E402 - click only (scaffold templates are strings)

cli.add_command(export_cmd)
cli.add_command(data_group)
cli.add_command(plugin_group)


def build_cli() -> click.Group:
    """The root group with every plugin's commands added (``register_commands``)."""
    from lmforge.plugins.registry import get_registry

    try:
        reg = get_registry()
        reg.add_commands(cli)
    except LmforgeError as exc:  # strict mode: a broken plugin is fatal
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for dist, seconds in reg.slow_plugins():
        click.echo(f"warning: plugin {dist} took {seconds:.1f} s to load; every lmforge command waits for it "
                   f"(see `lmforge plugins`; LMFORGE_DISABLE_PLUGINS={dist} skips it)", err=True)
    return cli


def main(argv: list[str] | None = None) -> None:
    from lmforge.runtime.quiet import configure_warnings

    configure_warnings()  # LMFORGE_VERBOSE=1 (or train --verbose) shows the libraries' deprecation warnings
    build_cli()(args=argv, prog_name="lmforge")


if __name__ == "__main__":
    main()
