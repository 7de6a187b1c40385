"""Data pipeline benchmark: tokenization throughput and streaming memory.

Produces the figures in docs/benchmarks.md ("Data pipeline"):

1. Tokenization throughput (examples/s) on N synthetic ``input_output`` rows
   (default 100,000) with the tiny-llama tokenizer:
   - lmforge, cold cache: read + validate + chat template + tokenize + prompt
     mask + write the memory-mapped token store (``lmforge.data.cache.tokenize_file``);
   - lmforge, warm cache: the same call again (hashes the file, tokenizes nothing);
   - baseline: ``datasets.load_dataset("json")`` + a plain batched ``Dataset.map``
     that tokenizes prompt and response and builds masked labels (no template).
2. Peak RSS while streaming a ~1 GB jsonl (and a ~1 GB .json array) through the
   reader (parse, validate, convert every record) against a ~100 MB jsonl, each
   in a fresh subprocess.

Usage::

    python benchmarks/data_pipeline.py                 # everything (a few minutes on 2 cores)
    python benchmarks/data_pipeline.py --rows 20000 --stream-mb 200   # quicker

Needs ``datasets`` for the baseline (``pip install datasets``; skipped if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

WORDS = ("the of and to in is was for on that with as by at from his her an which are this be or had not "
         "but what all were when we there can been has more if no out so said up its about into than them "
         "only other new some could time these two may then do first any my now such like our over man me "
         "even most made after also did many before must through back years where much your way well down "
         "should because each just those people how too little state good very make world still own see men "
         "work long get here between both life being under never day same another know while last might us "
         "great old year off come since against go came right used take three").split()


def make_rows(path: str, n: int, seed: int = 0, words: tuple[int, int] = (10, 80), out_words: tuple[int, int] = (20, 150)) -> int:
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            row = {"input": " ".join(rnd.choices(WORDS, k=rnd.randint(*words))) + "?",
                   "output": " ".join(rnd.choices(WORDS, k=rnd.randint(*out_words))) + "."}
            f.write(json.dumps(row) + "\n")
    return os.path.getsize(path)


def make_big(path: str, target_bytes: int, array: bool = False) -> int:
    """A jsonl (or, with ``array``, a .json array) of ~target_bytes, repeating a block of distinct rows."""
    block = os.path.join(os.path.dirname(path), "block.jsonl")
    make_rows(block, 5000, seed=1, words=(40, 120), out_words=(60, 200))
    data = open(block, "rb").read()
    if array:
        data = data.rstrip(b"\n").replace(b"\n", b",\n") + b",\n"
    with open(path, "wb") as f:
        f.write(b"[\n" if array else b"")
        written = 0
        while written < target_bytes:
            f.write(data)
            written += len(data)
        if array:
            f.seek(f.tell() - 2)
            f.write(b"\n]\n")
    return os.path.getsize(path)


def hwm_mb() -> float:
    """This process's peak RSS so far (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def bench_lmforge(path: str, n: int, max_length: int) -> dict:
    from lmforge.data.cache import tokenize_file
    from lmforge.data.prepare import encoder_for_model

    enc = encoder_for_model("tiny-llama", max_length=max_length)
    t = time.perf_counter()
    cold = tokenize_file(path, enc)
    t_cold = time.perf_counter() - t
    enc2 = encoder_for_model("tiny-llama", max_length=max_length)
    t = time.perf_counter()
    warm = tokenize_file(path, enc2)
    t_warm = time.perf_counter() - t
    assert warm.cache_hit and len(warm.store) == len(cold.store) == n
    return {"cold_s": round(t_cold, 2), "cold_examples_per_s": round(n / t_cold),
            "warm_s": round(t_warm, 3), "warm_examples_per_s": round(n / t_warm),
            "tokens": cold.encode.tokens}


def bench_baseline(path: str, n: int, max_length: int, cache_dir: str) -> dict:
    try:
        import datasets
    except ImportError:
        return {"skipped": "datasets is not installed (pip install datasets)"}
    from llm_plugins_llama.loader import tiny_tokenizer

    datasets.disable_progress_bars()
    tok = tiny_tokenizer()
    bos, eos = tok.bos_token_id, tok.eos_token_id

    def tokenize(batch):
        prompts = tok(batch["input"], add_special_tokens=False)["input_ids"]
        answers = tok(batch["output"], add_special_tokens=False)["input_ids"]
        ids, labels = [], []
        for p, a in zip(prompts, answers):
            x = ([bos] + p + a + [eos])[:max_length]
            y = ([-100] * (1 + len(p)) + a + [eos])[:max_length]
            ids.append(x)
            labels.append(y)
        return {"input_ids": ids, "labels": labels}

    t = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache_dir)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    out = ds.map(tokenize, batched=True, batch_size=1000, remove_columns=ds.column_names)
    t_map = time.perf_counter() - t
    assert len(out) == n
    return {"load_s": round(t_load, 2), "map_s": round(t_map, 2), "map_examples_per_s": round(n / t_map),
            "load_plus_map_examples_per_s": round(n / (t_load + t_map)), "datasets": datasets.__version__}


STREAM_CHILD = """
import sys, time
from lmforge.data.readers import ReadReport, iter_examples
from lmforge.plugins.registry import get_registry

def hwm_kb():  # this process's peak RSS (VmHWM; ru_maxrss would include the parent's, inherited at fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

get_registry()
base = hwm_kb()
report = ReadReport()
t = time.perf_counter()
n = sum(1 for _ in iter_examples(sys.argv[1], report=report))
dt = time.perf_counter() - t
print(n, dt, base, hwm_kb())
"""


def bench_stream(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STREAM_CHILD, path], capture_output=True, text=True, check=True)
    n, dt, base, peak = out.stdout.split()
    size = os.path.getsize(path)
    return {"file_mb": round(size / 2**20), "records": int(n), "seconds": round(float(dt), 1),
            "mb_per_s": round(size / 2**20 / float(dt), 1),
            "rss_after_imports_mb": round(int(base) / 1024, 1), "peak_rss_mb": round(int(peak) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--stream-mb", type=int, default=1024, help="size of the big streaming file")
    ap.add_argument("--workdir", default=None, help="where to write the generated files (default: a temp dir)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    args = ap.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="lmforge-bench-")
    os.makedirs(work, exist_ok=True)
    os.environ["LMFORGE_CACHE_DIR"] = os.path.join(work, "cache")
    shutil.rmtree(os.environ["LMFORGE_CACHE_DIR"], ignore_errors=True)
    results: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
                     "rows": args.rows, "max_length": args.max_length}
    try:
        rows_path = os.path.join(work, "rows.jsonl")
        results["rows_file_mb"] = round(make_rows(rows_path, args.rows) / 2**20, 1)
        print(f"[bench] {args.rows} rows, {results['rows_file_mb']} MB", file=sys.stderr)
        results["lmforge"] = bench_lmforge(rows_path, args.rows, args.max_length)
        results["lmforge"]["peak_rss_mb_process"] = hwm_mb()
        print(f"[bench] lmforge {results['lmforge']}", file=sys.stderr)
        results["baseline_datasets_map"] = bench_baseline(rows_path, args.rows, args.max_length,
                                                          os.path.join(work, "hf_cache"))
        print(f"[bench] baseline {results['baseline_datasets_map']}", file=sys.stderr)

        small = os.path.join(work, "small.jsonl")
        big = os.path.join(work, "big.jsonl")
        make_big(small, max(1, args.stream_mb // 10) * 2**20)
        results["stream_small"] = bench_stream(small)
        print(f"[bench] stream {results['stream_small']}", file=sys.stderr)
        make_big(big, args.stream_mb * 2**20)
        results["stream_big"] = bench_stream(big)
        print(f"[bench] stream {results['stream_big']}", file=sys.stderr)
        os.remove(big)
        big_json = os.path.join(work, "big.json")
        make_big(big_json, args.stream_mb * 2**20, array=True)
        results["stream_big_json_array"] = bench_stream(big_json)
        print(f"[bench] stream {results['stream_big_json_array']}", file=sys.stderr)
        os.remove(big_json)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    results["peak_rss_this_process_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
