"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Iterator

from mbc_jax import UserError, formatting


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="checkpoint folder (config.json + weights) or hub id")
    add_mesh_arg(p)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"))


def add_mesh_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mesh", default=None, metavar="D,F,T",
                   help="device mesh sizes for (data, fsdp, tensor); -1 = the rest (default: all devices on data)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="JSONL / JSON / Parquet / CSV file, or hf:NAME[:CONFIG][@REVISION][:SPLIT][?data_files=...]")
    p.add_argument("--schema", default="auto", help="record schema: auto, dolly, chat, prompt_completion, text, "
                   "tokens, alpaca, sharegpt, tree (conversation trees)")
    p.add_argument("--fields", default=None, metavar="TARGET=COLUMN,...",
                   help="read the file's COLUMN as the record key TARGET, e.g. instruction=question,response=answer")
    p.add_argument("--tree", default="best", choices=("best", "all"),
                   help="conversation trees: the top-ranked reply at each turn (best) or every path (all)")
    p.add_argument("--tree-filter", default="deleted,failed_review", metavar="F,...",
                   help="conversation-tree messages to leave out: deleted, failed_review, unreviewed, or none "
                        "(default: deleted,failed_review)")
    p.add_argument("--template", default=None, metavar="FILE|chat",
                   help="JSON/YAML file of dialogue template fields, or 'chat': the tokenizer's own chat template "
                        "(default: the paper's Human:/Assistant: template)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) bad records instead of stopping")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records")


def format_options(args: argparse.Namespace) -> dict:
    """The `load_records` keywords of the data flags."""
    return {"fields": args.fields, "tree": args.tree, "tree_filter": args.tree_filter}


def load_model_from_args(args: argparse.Namespace, with_tokenizer: bool = True):
    from mbc_jax.models import load_model
    from mbc_jax.sharding import make_mesh

    return load_model(args.model, mesh=make_mesh(args.mesh), with_tokenizer=with_tokenizer,
                      dtype=args.dtype, param_dtype=args.param_dtype)


def load_template(args: argparse.Namespace):
    from mbc_jax.data import Template

    return Template.from_spec(args.template)


def fmt(x: float | None, digits: int = 3) -> str:
    """A number in the commands' tables: "-" when missing (None, NaN), 3 significant digits from 1e4 up."""
    return formatting.fmt(x, digits, missing="-", short_from=1e4)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def require_positive(name: str, value: float | int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name}: must be positive, got {value}")


def chunked(items: Iterator, size: int) -> Iterator[list]:
    """Lists of `size` items (the last one shorter) from an iterator, read as they are needed."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def record_count(args: argparse.Namespace) -> int | None:
    """The progress bar's total: the non-blank lines of a local JSONL file (a fast pass over its bytes), capped by
    --limit; None where that is not the record count (other formats, URLs)."""
    path = str(args.data)
    if not path.endswith(".jsonl") or not os.path.isfile(path):
        return args.limit
    n = 0
    with open(path, "rb") as f:
        for line in f:
            n += bool(line.strip())
    return n if args.limit is None else min(n, args.limit)
