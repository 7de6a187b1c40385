"""``lmforge data``: inspect, convert and index training data.

The group object :data:`data_group` is added to the root CLI by
:mod:`lmforge.cli.main`. Plugins add subcommands to it directly, which
works whatever order plugins are loaded in::

    from lmforge.cli.data import data_group

    @hookimpl
    def register_commands(cli):
        data_group.add_command(my_command)

Importing this module costs click only; each command imports what it needs.
"""

from __future__ import annotations

import json
import os
import sys

import click

from lmforge.errors import user_errors


@click.group("data", context_settings={"help_option_names": ["-h", "--help"]})
def data_group() -> None:
    """Inspect, convert and index training data (see docs/data.md)."""


# ------------------------------------------------------------------ inspect
PERCENTILES = (50, 90, 95, 99)


def length_histogram(lengths, bins: int = 12, width: int = 40) -> list[str]:
    """Text histogram lines: ``lo-hi | ####  count``."""
    import numpy as np

    lengths = np.asarray(lengths)
    lo, hi = (int(lengths.min()), int(lengths.max())) if len(lengths) else (0, 0)
    bins = max(1, min(bins, hi - lo + 1))
    edges = np.unique(np.linspace(lo, hi + 1, bins + 1).round().astype(np.int64))
    counts, _ = np.histogram(lengths, bins=edges)
    top = max(int(counts.max()), 1)
    pad = len(str(int(edges[-1])))
    out = []
    for i, c in enumerate(counts):
        bar = "#" * int(round(width * int(c) / top))
        out.append(f"  {int(edges[i]):>{pad}}-{int(edges[i + 1]) - 1:<{pad}} | {bar:<{width}} {int(c)}")
    return out


def plot_histogram(lengths, path: str, title: str, unit: str) -> None:
    try:
        import matplotlib
    except ImportError:
        from lmforge.errors import MissingDependencyError

        raise MissingDependencyError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.hist(lengths, bins=50, color="#3b6ea8")
    ax.set_xlabel(f"example length ({unit})")
    ax.set_ylabel("examples")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@data_group.command("inspect")
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", default="auto", show_default=True, help="force a data format")
@click.option("--tokenizer", "model", default=None,
              help="preset or checkpoint directory whose tokenizer and template count tokens (default: characters)")
@click.option("--template", type=click.Choice(["family", "raw"]), default="family", show_default=True)
@click.option("--max-length", type=int, default=None, help="also count examples longer than this")
@click.option("--strict", is_flag=True, help="stop at the first bad record (default: count and show them)")
@click.option("--plot", "plot_path", default=None, metavar="OUT.png", help="write a length histogram picture")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@user_errors
def inspect_cmd(files, fmt, model, template, max_length, strict, plot_path, as_json) -> None:
    """Detected format, record count, length percentiles and a length histogram of FILES."""
    import numpy as np

    from lmforge.data.readers import ReadReport, expand_paths, read_examples
    from lmforge.plugins.registry import get_registry

    reg = get_registry()
    if fmt != "auto":
        reg.data_format(fmt)
    encoder = None
    if model:
        from lmforge.data.prepare import encoder_for_model

        encoder = encoder_for_model(model, template=template, registry=reg)
    unit = "tokens" if encoder is not None else "characters"
    import array

    report = ReadReport()
    lengths = array.array("q")  # 8 bytes an example, whatever the file size
    per_file = []
    for path in expand_paths(list(files), "FILES"):
        before = (report.records, report.examples, report.skipped)
        for _, examples in read_examples(path, fmt, reg, on_error="raise" if strict else "skip", report=report):
            for ex in examples:
                if encoder is not None:
                    lengths.append(sum(len(ids) for ids, _ in encoder.segments(ex)))
                else:
                    lengths.append(len(ex.text) if ex.text is not None else sum(len(m.content) for m in ex.messages))
        per_file.append({"file": path, "format": report.formats.get(path), "records": report.records - before[0],
                         "examples": report.examples - before[1], "bad_records": report.skipped - before[2]})
    arr = np.asarray(lengths, dtype=np.int64)
    stats = {"unit": unit, "count": int(len(arr))}
    if len(arr):
        stats.update({"mean": round(float(arr.mean()), 2), "min": int(arr.min()), "max": int(arr.max()),
                      **{f"p{p}": int(np.percentile(arr, p)) for p in PERCENTILES}})
        if max_length:
            stats["longer_than_max_length"] = int((arr > max_length).sum())
    if as_json:
        click.echo(json.dumps({"files": per_file, "lengths": stats, "bad_records_shown": [str(b) for b in report.shown]},
                              indent=1, ensure_ascii=False))
    else:
        for f in per_file:
            click.echo(f"{f['file']}: format {f['format'] or '?'}, {f['records']} records, {f['examples']} examples"
                       + (f", {f['bad_records']} bad" if f["bad_records"] else ""))
        if len(per_file) > 1:
            click.echo(f"total: {report.records} records, {report.examples} examples, {report.skipped} bad")
        if report.skipped:
            click.echo(report.skipped_text())
        if len(arr):
            click.echo(f"length ({unit}{', ' + model if model else ''}): mean {stats['mean']}, min {stats['min']}, "
                       + ", ".join(f"p{p} {stats[f'p{p}']}" for p in PERCENTILES) + f", max {stats['max']}")
            if max_length:
                click.echo(f"longer than {max_length}: {stats['longer_than_max_length']} "
                           f"({100.0 * stats['longer_than_max_length'] / len(arr):.1f}%) would be truncated")
            click.echo("histogram:")
            for line in length_histogram(arr):
                click.echo(line)
    if plot_path and len(arr):
        plot_histogram(arr, plot_path, ", ".join(os.path.basename(f) for f in files), unit)
        click.echo(f"wrote {plot_path}", err=True)


# ------------------------------------------------------------------ convert
@data_group.command("convert")
@click.argument("files", nargs=-1, required=True)
@click.option("--output", "-o", required=True, help="the .jsonl file to write")
@user_errors
def convert_cmd(files, output) -> None:
    """Convert .txt FILES (one document a line) to input_output JSONL for pretraining (input empty)."""
    from lmforge.data.readers import expand_paths, file_kind, iter_records
    from lmforge.errors import DataError

    paths = expand_paths(list(files), "FILES")
    for p in paths:
        if file_kind(p) != "txt":
            raise DataError(f"{p}: convert reads .txt files; other formats are read by training directly")
    tmp = output + ".tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as out:
        try:
            for p in paths:
                for line, text, problem in iter_records(p):
                    if problem is not None:
                        raise DataError(f"{p}:{line}: {problem}")
                    out.write(json.dumps({"input": "", "output": text}, ensure_ascii=False) + "\n")
                    n += 1
        except BaseException:
            out.close()
            os.remove(tmp)
            raise
    os.replace(tmp, output)
    click.echo(f"wrote {n} records to {output}")


# ------------------------------------------------------------------ index
@data_group.command("index")
@click.argument("sources", nargs=-1, required=True)
@click.option("--output", "-o", required=True, help="the index directory to write")
@click.option("--tokenizer", "model", required=True, help="preset or checkpoint directory to tokenize for")
@click.option("--format", "fmt", default="auto", show_default=True, help="force a data format")
@click.option("--template", type=click.Choice(["family", "raw"]), default="family", show_default=True)
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True)
@click.option("--language", default=None, help="record this language instead of guessing it")
@click.option("--name", default=None, help="dataset_name of the printed data.mix entry (default: the directory name)")
@user_errors
def index_cmd(sources, output, model, fmt, template, on_error, language, name) -> None:
    """Tokenize SOURCES (files, directories, globs) into a memory-mapped index directory."""
    from lmforge.data.readers import expand_paths
    from lmforge.data.prepare import encoder_for_model
    from lmforge.data.indexed import build_index, mix_entry
    from lmforge.plugins.registry import get_registry

    reg = get_registry()
    if fmt != "auto":
        reg.data_format(fmt)
    paths = expand_paths(list(sources), "SOURCES")
    encoder = encoder_for_model(model, template=template, registry=reg)
    meta = build_index(paths, output, encoder, fmt_name=fmt, on_error=on_error, language=language,
                       tokenizer_model=model, registry=reg,
                       log=lambda m: click.echo(m, err=True))
    shown = {k: meta[k] for k in ("language", "nlines", "nbytes", "length_distribute", "avg_token_per_line")}
    click.echo(json.dumps(shown, ensure_ascii=False))
    click.echo("data.mix entry:", err=True)
    entry = mix_entry(name or os.path.basename(os.path.normpath(output)), output, meta)
    click.echo(json.dumps(entry, ensure_ascii=False), err=True)


# ------------------------------------------------------------------ cache
@data_group.command("cache")
@click.option("--dir", "cache_dir", default=None, help="cache directory (default: data.cache_dir's default)")
@click.option("--clear", is_flag=True, help="delete every cached entry")
@user_errors
def cache_cmd(cache_dir, clear) -> None:
    """Show (or clear) the token cache: where it is, entries and size."""
    import shutil

    from lmforge.data.cache import cache_dir_for

    root = cache_dir_for(cache_dir)
    entries = size = 0
    for sub in ("tokens", "records"):
        d = os.path.join(root, sub)
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            p = os.path.join(d, name)
            if os.path.isdir(p):
                entries += 1
                size += sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs)
    if clear:
        for sub in ("tokens", "records"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        click.echo(f"cleared {entries} entries ({size / 2**20:.1f} MiB) from {root}")
        return
    click.echo(f"{root}: {entries} entries, {size / 2**20:.1f} MiB")


@data_group.command("pack")
@click.argument("train_file", nargs=-1, required=True)
@click.option("--model", "-m", required=True, help="preset or checkpoint directory whose tokenizer and template to use")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="packed JSONL file to write")
@click.option("--max-length", type=int, default=512, show_default=True, help="slots per packed row (the job's max_length)")
@click.option("--format", "data_format", default="auto", show_default=True, help="input data format")
@click.option("--template", type=click.Choice(["family", "raw"]), default="family", show_default=True)
@click.option("--train-on-prompt", is_flag=True, help="count prompt tokens as trained (as data.train_on_prompt)")
@click.option("--family", default=None, help="force a model family")
@click.option("--trust-remote-code", is_flag=True)
def pack_command(train_file, model, output, max_length, data_format, template, train_on_prompt, family,
                 trust_remote_code) -> None:
    """Pack TRAIN_FILE(s) offline into rows of --max-length tokens (AntLLM packed format).

    Train the result with `packing: true` and `data.online_packing: false`.
    """
    from lmforge.packing.offline import pack_files

    @user_errors
    def run():
        stats = pack_files(list(train_file), model, output, max_length=max_length, data_format=data_format,
                           template=template, train_on_prompt=train_on_prompt, family=family,
                           trust_remote_code=trust_remote_code)
        click.echo(f"{stats.summary()}; wrote {output}", err=True)
        click.echo(json.dumps(stats.to_json()))

    run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(data_group())
