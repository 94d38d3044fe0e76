"""mbc_jax/data/tables.py: Parquet and CSV through `datasets` (sources name the line a row starts on), the
hf: spec grammar, and a clear error when `datasets` is missing."""

from __future__ import annotations

import sys

import pytest

from mbc_jax import UserError
from mbc_jax.data import DataError, load_records
from mbc_jax.data.tables import HubSpec, parse_hf_spec


@pytest.mark.parametrize("spec,want", [
    ("hf:org/set", HubSpec("org/set")),
    ("hf:org/set:test", HubSpec("org/set", split="test")),
    ("hf:org/set:cfg:test", HubSpec("org/set", "cfg", None, "test")),
    ("hf:org/set@abc123", HubSpec("org/set", None, "abc123")),
    ("hf:org/set@abc123:validation", HubSpec("org/set", None, "abc123", "validation")),
    ("hf:org/set:cfg@v2", HubSpec("org/set", "cfg", "v2")),
    ("hf:org/set:cfg@v2:test?data_files=d/a.parquet,d/b.parquet",
     HubSpec("org/set", "cfg", "v2", "test", ("d/a.parquet", "d/b.parquet"))),
    ("hf:json?data_files=x.jsonl", HubSpec("json", data_files=("x.jsonl",))),
])
def test_hf_spec(spec, want):
    assert parse_hf_spec(spec) == want


def test_hf_spec_malformed():
    with pytest.raises(UserError, match="expected hf:NAME"):
        parse_hf_spec("hf:a:b:c:d")


@pytest.mark.parametrize("name", ["d.parquet", "d.csv", "d.tsv"])
def test_tables_need_datasets(tmp_path, monkeypatch, name):
    (tmp_path / name).write_text("instruction,response\nq,a\n")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pip install 'mbc-jax\[hf\]'"):
        load_records(tmp_path / name)


def test_csv_rows_lines_and_text(tmp_path):
    pytest.importorskip("datasets")
    src = tmp_path / "d.csv"
    # a quoted response spanning two lines; "NA" and "007" stay text; row 4 has an empty response
    src.write_text('question,answer,task\n"What is 0+7?","007",math\n"Say NA","NA\nreally",misc\n\nq,,misc\n')
    with pytest.raises(DataError) as e:
        load_records(src, fields="instruction=question,response=answer,category=task")
    assert str(e.value) == f"{src}:6: answer (read as response): empty"
    records, rep = load_records(src, fields="instruction=question,response=answer,category=task", skip_bad=True)
    assert rep.format == "csv" and rep.schema == "dolly" and rep.records_read == 3
    assert [r.turns[1][1] for r in records] == ["007", "NA\nreally"]
    assert [r.source for r in records] == [f"{src}:2", f"{src}:3"] and records[0].category == "math"


def test_parquet_alpaca_and_tree(tmp_path):
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = tmp_path / "a.parquet"
    pq.write_table(pa.table({"instruction": ["q1", "q2"], "input": ["", "ctx"], "output": ["a1", ""]}), src)
    records, rep = load_records(src, skip_bad=True)
    assert rep.format == "parquet" and rep.schema == "alpaca" and len(records) == 1
    assert rep.skipped == [(f"{src}:2", f"{src}:2: output: empty")]
    # an OpenAssistant-like tree: ranks as floats with NaN for unranked, nulls for the root's parent
    tree = tmp_path / "t.parquet"
    pq.write_table(pa.table({"message_id": ["r", "a", "b"], "parent_id": [None, "r", "r"],
                             "role": ["prompter", "assistant", "assistant"], "text": ["q", "A", "B"],
                             "rank": [float("nan"), 1.0, 0.0], "deleted": [False, False, False],
                             "review_result": [True, True, None]}), tree)
    records, rep = load_records(tree)
    assert rep.schema == "tree" and [r.id for r in records] == ["r/b"]
    assert [r.id for r in load_records(tree, tree_filter="unreviewed")[0]] == ["r/a"]


def test_hub_data_without_network_is_one_clear_line_and_local_builders_still_load(tmp_path, monkeypatch):
    """Issue 30: with no network, an hf: data set printed 11 lines of retries (half a minute) before its error."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub_constants

    from mbc_jax.data import tables

    monkeypatch.setattr(tables, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # the test session sets HF_HUB_OFFLINE=1
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    before = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    with pytest.raises(UserError, match=r"hf:no-such-org/no-such-set: the Hugging Face Hub cannot be reached"):
        list(tables.iter_hub("hf:no-such-org/no-such-set"))
    data = tmp_path / "rows.jsonl"
    data.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c", "response": "d"}\n')
    rows = list(tables.iter_hub(f"hf:json?data_files={data}"))  # a packaged builder on a local file needs no hub
    assert [r[1]["instruction"] for r in rows] == ["a", "c"]
    assert (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE) == before  # offline only for the load
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # chosen by the user: said so
    with pytest.raises(UserError, match=r"HF_HUB_OFFLINE is set and 'no-such-org/no-such-set' is not in the local"):
        list(tables.iter_hub("hf:no-such-org/no-such-set"))
