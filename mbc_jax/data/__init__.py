"""Demonstration data: read records, render them with one dialogue template, tokenize, batch.

    records, _ = load_records(path)            # records.py: JSONL / JSON array / hf:NAME, schema auto-detected
    examples, _ = tokenize(records, tokenizer)  # template.py: token ids + response mask, truncated to max_length
                                                # (Template(chat=True): the tokenizer's chat template, chat.py)
    batches = pack(examples, seq_len, rows)     # packing.py: several records per row, segment ids, fixed shapes

Library functions never print; they return reports with `summary()`. Bad input raises
`DataError` ("FILE:LINE: FIELD: problem"), or with `skip_bad=True` becomes a counted skip listed
in the report.
"""

from mbc_jax.data.packing import Batch, build_batches, check_lengths, pack, pack_drawn, row_bucket
from mbc_jax.data.records import iter_records, load_records
from mbc_jax.data.schema import ROLES, SCHEMAS, DataError, LoadReport, Record, json_type_name
from mbc_jax.data.template import (
    OVERFLOW_POLICIES,
    Example,
    TargetReport,
    Template,
    TokenizeReport,
    split_train_val,
    split_trainable,
    tokenize,
)

__all__ = [
    "OVERFLOW_POLICIES",
    "ROLES",
    "SCHEMAS",
    "Batch",
    "DataError",
    "Example",
    "LoadReport",
    "Record",
    "Template",
    "TargetReport", "TokenizeReport",
    "build_batches",
    "check_lengths",
    "json_type_name",
    "iter_records",
    "load_records",
    "pack",
    "pack_drawn",
    "row_bucket",
    "split_train_val", "split_trainable",
    "tokenize",
]
