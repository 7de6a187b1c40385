"""ZeRO stages 1-3: per-rank parameter, gradient and optimizer bytes, exact against DeepSpeed itself.

Two CPU processes (gloo) run DeepSpeed 0.19 on tiny-llama (full fine-tuning, two
optimizer groups as transformers' Trainer builds them, and LoRA with frozen base
weights) through one forward/backward/step, and report the bytes of the tensors
DeepSpeed holds on rank 0: the 16-bit flat buffer and frozen parameters (stages
1-2) or the parameter partitions (stage 3), the averaged gradient partitions, and
the fp32 master partitions plus the optimizer state.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("deepspeed")
pytest.importorskip("torch")

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch.multiprocessing as mp

    CASES = [(stage, method) for stage in (1, 2, 3) for method in ("full", "lora")]

    def run(rank, world, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["ZERO_TEST_PORT"], RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        import torch, deepspeed
        torch.set_num_threads(1)
        deepspeed.init_distributed(dist_backend="gloo")
        from lmforge.plugins.registry import get_registry
        import estimator_measure as measure
        fam = get_registry().family("llama")
        preset = fam.preset("tiny-llama")
        nb = lambda t: t.numel() * t.element_size()
        results = {}
        for stage, method in CASES:
            torch.manual_seed(0)
            model = measure.build_family_model(fam, preset, dtype="bf16", peft=method)
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            nodecay = lambda n: "bias" in n or "norm" in n
            groups = [{"params": [p for n, p in named if not nodecay(n)]}, {"params": [p for n, p in named if nodecay(n)]}]
            groups = [g for g in groups if g["params"]]
            opt = torch.optim.AdamW(groups, lr=1e-4)
            cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
                   "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
            engine, zopt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
            ids = torch.randint(0, preset.config["vocab_size"], (1, 16))
            engine.backward(engine(input_ids=ids, labels=ids).loss)
            if stage < 3:
                params = sum(nb(t) for t in zopt.bit16_groups_flat) + sum(
                    nb(p) for p in model.parameters() if not p.requires_grad)
                grads = sum(nb(g) for gl in zopt.averaged_gradients.values() for g in (gl or []) if torch.is_tensor(g))
                master = sum(nb(t) for t in zopt.single_partition_of_fp32_groups)
            else:
                params = sum(nb(p.ds_tensor) for p in model.parameters())
                grads = nb(zopt.grad_partitions_flat_buffer)
                master = sum(nb(t) for t in zopt.fp32_partitioned_groups_flat)
            engine.step()
            state = sum(nb(v) for s in zopt.optimizer.state.values() for v in s.values() if torch.is_tensor(v))
            results[f"{stage}-{method}"] = {"params": params, "grads": grads, "optimizer": master + state}
            del engine, zopt, model, opt
        if rank == 0:
            with open(out, "w") as f:
                json.dump(results, f)

    if __name__ == "__main__":
        mp.spawn(run, args=(2, sys.argv[1]), nprocs=2)
''')


@pytest.fixture(scope="module")
def deepspeed_bytes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero")
    script, out = tmp / "worker.py", tmp / "out.json"
    script.write_text(WORKER)
    with socket.socket() as sock:  # a free port for the rendezvous (other jobs may share this machine)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))  # the worker imports tests/estimator_measure.py
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, ZERO_TEST_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=path)
    r = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600, env=env)
    if r.returncode != 0:
        pytest.fail(f"DeepSpeed worker failed:\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_zero_partitions_are_exact(deepspeed_bytes, stage, method):
    from lmforge.modeling.memory import EstimateJob, get_estimator
    from lmforge.plugins.registry import get_registry

    fam = get_registry().family("llama")
    arch = fam.arch_from_config(fam.preset("tiny-llama").config)
    bd = get_estimator()(arch, EstimateJob(peft=method, default_lora_targets=fam.default_lora_targets, dtype="bf16",
                                           zero_stage=stage, world_size=2, seq_len=16, device="cpu"))
    got = deepspeed_bytes[f"{stage}-{method}"]
    assert {"params": bd.params_bytes, "grads": bd.grads_bytes, "optimizer": bd.optimizer_bytes} == got
