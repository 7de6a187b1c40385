"""Weighted mixtures: proportions, determinism, resume, exhaustion, transforms, mix-file validation."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from lmforge.cli.main import build_cli
from lmforge.data.prepare import encoder_for_model, prepare_mixture
from lmforge.errors import ConfigError, DataError
from lmforge.data.mixing import MixSchedule, permute, read_mix_file


def counts(schedule, n):
    c = np.zeros(len(schedule.weights), dtype=int)
    for i in range(n):
        c[schedule.lookup(i)[0]] += 1
    return c


def test_proportions_follow_the_weights_over_10k_draws():
    s = MixSchedule([1, 2, 7], [10**6] * 3, [True] * 3, seed=3, total=10_000)
    got = counts(s, 10_000) / 10_000
    for p, frac in zip([0.1, 0.2, 0.7], got):
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / 10_000)  # 4 standard deviations


def test_same_seed_same_sequence_other_seed_another():
    a = MixSchedule([1, 1], [50, 70], [True, True], seed=7, total=1000)
    b = MixSchedule([1, 1], [50, 70], [True, True], seed=7, total=1000)
    c = MixSchedule([1, 1], [50, 70], [True, True], seed=8, total=1000)
    seq = lambda s: [(s.lookup(i), s.row(*s.lookup(i))) for i in range(1000)]  # noqa: E731
    assert seq(a) == seq(b) != seq(c)


def test_random_access_matches_sequential_across_chunks():
    s = MixSchedule([3, 1], [10**5, 10**5], [True, True], seed=1, total=5000, chunk=64)
    forward = [s.lookup(i) for i in range(5000)]
    rng = np.random.default_rng(0)
    fresh = MixSchedule([3, 1], [10**5, 10**5], [True, True], seed=1, total=5000, chunk=64)
    for i in rng.permutation(5000)[:500]:
        assert fresh.lookup(int(i)) == forward[int(i)]
    # each dataset's draws are numbered 0, 1, 2, ... in order
    for d in range(2):
        assert [n for k, n in forward if k == d] == list(range(sum(k == d for k, _ in forward)))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1000, 4097])
def test_permutation_is_a_bijection(n):
    assert sorted(permute(i, n, 12345) for i in range(n)) == list(range(n))


def test_non_repeating_dataset_runs_out_is_reported_and_never_recycled():
    s = MixSchedule([1, 1], [10, 10**6], [False, True], seed=0, total=500)
    rows = [s.row(d, n) for d, n in (s.lookup(i) for i in range(500)) if d == 0]
    assert sorted(rows) == list(range(10))  # each line once, then no more
    assert len(s.exhausted) == 1 and s.exhausted[0][1] == 0
    when = s.exhausted[0][0]
    assert all(s.lookup(i)[0] == 1 for i in range(when, 500))


def test_mixture_ends_when_every_dataset_ran_out():
    s = MixSchedule([1, 1], [5, 8], [False, False], seed=0, total=1000)
    assert s.total == 13
    assert sorted(counts(s, 13)) == [5, 8]


def test_repeating_dataset_reshuffles_each_pass():
    s = MixSchedule([1], [6], [True], seed=0, total=18)
    passes = [[s.row(0, n) for n in range(p * 6, p * 6 + 6)] for p in range(3)]
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


# --------------------------------------------------------------------------- mixture over real data


@pytest.fixture
def mix_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"input": f"A question {i}", "output": f"A answer {i}"}) + "\n" for i in range(40)))
    b = tmp_path / "b.txt"
    b.write_text("".join(f"B document number {i}\n" for i in range(30)))
    idx = tmp_path / "b_idx"
    res = CliRunner().invoke(build_cli(), ["data", "index", str(b), "-o", str(idx), "--tokenizer", "tiny-llama"])
    assert res.exit_code == 0, res.output
    (tmp_path / "t.py").write_text(
        "def transform(data, num_sample, rng):\n"
        "    return {'input': data['q'] + ' #%d' % num_sample, 'output': data['a'] + ' %d' % rng.randint(0, 999)}\n")
    c = tmp_path / "c.jsonl"
    c.write_text("".join(json.dumps({"q": f"C q{i}", "a": f"C a{i}"}) + "\n" for i in range(20)))
    mix = [
        {"dataset_name": "a", "path": "a.jsonl", "abs_weight": 2, "allow_repeat": True, "nlines": 40},
        {"dataset_name": "b", "path": "b_idx", "abs_weight": 1, "allow_repeat": True, "nlines": 30},
        {"dataset_name": "c", "path": "c.jsonl", "abs_weight": 1, "allow_repeat": True, "transforms": "t.py"},
    ]
    (tmp_path / "mix.json").write_text(json.dumps(mix))
    cfg = {"max_length": 64, "data": {"mix": str(tmp_path / "mix.json"), "format": "auto", "train_on_prompt": False,
                                      "mix_samples": 10_000}}
    return cfg, tmp_path


def build_mix(cfg, seed=5, log=None):
    lines = []
    enc = encoder_for_model("tiny-llama", max_length=cfg["max_length"])
    return prepare_mixture(cfg, enc, seed, log=log or lines.append), enc


def test_mixture_of_file_index_and_transform(mix_setup):
    cfg, tmp = mix_setup
    log: list[str] = []
    mix, enc = build_mix(cfg, log=log.append)
    assert len(mix) == 10_000
    got = np.bincount([mix.draw(i)[0] for i in range(10_000)], minlength=3) / 10_000
    for p, frac in zip([0.5, 0.25, 0.25], got):
        assert abs(frac - p) < 4 * math.sqrt(p * (1 - p) / 10_000)
    text = lambda i: enc.tokenizer.decode(mix[i]["input_ids"], skip_special_tokens=True)  # noqa: E731
    by_ds = {}
    for i in range(60):
        by_ds.setdefault(mix.draw(i)[0], []).append(i)
    assert all(text(i).startswith("[INST] A question") for i in by_ds[0])
    assert all(text(i).startswith("B document number") for i in by_ds[1])
    d, n, row = mix.draw(by_ds[2][0])
    assert re.fullmatch(rf"\[INST\] C q{row} #{n} \[/INST\] C a{row} \d+", text(by_ds[2][0]))
    assert "mixture of 3 datasets, 10000 draws" in "\n".join(log)


def test_resumed_mixture_continues_the_same_sequence(mix_setup):
    cfg, _ = mix_setup
    first, _ = build_mix(cfg)
    uninterrupted = [first[i] for i in range(200)]
    restarted, _ = build_mix(cfg)  # a new process after a restart at draw 120
    assert [restarted[i] for i in range(120, 200)] == uninterrupted[120:]
    other_seed, _ = build_mix(cfg, seed=6)
    assert [other_seed[i] for i in range(200)] != uninterrupted


def test_trainer_sampler_resume_continues_the_mixture(mix_setup):
    """What transformers.Trainer does on resume: replay its seeded sampler and skip the consumed batches."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    cfg, _ = mix_setup
    mix, _ = build_mix(cfg)

    def batches(ds, skip):
        g = torch.Generator().manual_seed(42)
        dl = DataLoader(ds, batch_size=4, sampler=RandomSampler(ds, generator=g), collate_fn=list)
        out = []
        for k, b in enumerate(dl):
            if k >= skip:
                out.append([x["input_ids"] for x in b])
            if k == 9:
                return out

    full = batches(mix, 0)
    resumed = batches(build_mix(cfg)[0], 6)
    assert resumed == full[6:]


def test_exhausted_dataset_is_reported(mix_setup):
    cfg, tmp = mix_setup
    mix = json.loads((tmp / "mix.json").read_text())
    mix[1]["allow_repeat"] = False
    (tmp / "mix.json").write_text(json.dumps(mix))
    log: list[str] = []
    ds, _ = build_mix(cfg, log=log.append)
    assert sum(1 for i in range(len(ds)) if ds.draw(i)[0] == 1) == 30
    assert re.search(r"warning: dataset 'b' \(allow_repeat: false\) ran out at draw \d+ after 30 examples",
                     "\n".join(log))


@pytest.mark.parametrize("entry,message", [
    ({"dataset_name": "a", "path": "x", "abs_weigth": 1}, r"\[0\]\.abs_weigth: unknown key \(did you mean 'abs_weight'\?\)"),
    ({"dataset_name": "a", "path": "x"}, r"\[0\]: missing key 'abs_weight'"),
    ({"dataset_name": "a", "path": "x", "abs_weight": -1}, r"\[0\]\.abs_weight: expected a number >= 0"),
    ({"dataset_name": "a", "path": "x", "abs_weight": 1, "allow_repeat": "yes"}, r"allow_repeat: expected true or false"),
    ({"dataset_name": "a", "path": "x", "abs_weight": 1, "transforms": "nope.py"}, r"transforms: .*nope.py: no such file"),
])
def test_mix_file_errors_name_the_entry_and_key(tmp_path, entry, message):
    p = tmp_path / "mix.json"
    p.write_text(json.dumps([entry]))
    with pytest.raises(ConfigError, match=message):
        read_mix_file(str(p))


def test_duplicate_names_and_bad_transform(tmp_path, mix_setup):
    cfg, tmp = mix_setup
    p = tmp / "dup.json"
    p.write_text(json.dumps([{"dataset_name": "a", "path": "a.jsonl", "abs_weight": 1}] * 2))
    with pytest.raises(ConfigError, match=r"\[1\]\.dataset_name: 'a' appears twice"):
        read_mix_file(str(p))
    (tmp / "t.py").write_text("def transform(data, num_sample, rng):\n    return {'nothing': 1}\n")
    with pytest.raises(DataError, match=r"c\.jsonl:\d+ \(dataset 'c', after transform\): cannot detect the data format"):
        build_mix(cfg)


def test_training_on_a_mixture(mix_setup):
    from lmforge.train.pipeline import run_training

    cfg, tmp = mix_setup
    job = {"model": "tiny-llama", "output_dir": str(tmp / "out"), "max_length": 32,
           "data": {"mix": cfg["data"]["mix"], "mix_samples": 64},
           "train": {"max_steps": 2, "per_device_train_batch_size": 4, "report_to": [], "save_strategy": "no",
                     "disable_tqdm": True}}
    res = run_training(job)
    assert res.global_step == 2 and math.isfinite(res.train_loss)
