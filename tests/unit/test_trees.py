"""mbc_jax/data/trees.py: conversation trees (one message per line, parent ids) expanded best / all, filters,
and orphans, cycles and empty assistant turns reported by file, line and field, never dropped silently."""

from __future__ import annotations

import pytest

from conftest import write_jsonl
from mbc_jax import UserError
from mbc_jax.data import DataError, load_records


def msg(mid, parent, role, text, rank=None, **kw):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, **kw}


# r: prompt; a1 (rank 1), a0 (rank 0) reply; p under a0 asks again; b0/b1 answer p; a2 is deleted
TREE = [
    msg("r", None, "prompter", "Q1", category="qa", lang="en"),
    msg("a1", "r", "assistant", "A1", 1),
    msg("a0", "r", "assistant", "A0", 0),
    msg("p", "a0", "prompter", "Q2", 0),
    msg("b1", "p", "assistant", "B1", 1),
    msg("b0", "p", "assistant", "B0", 0),
    msg("a2", "r", "assistant", "gone", None, deleted=True),
    msg("a2c", "a2", "prompter", "under a deleted one"),
    msg("s", None, "prompter", "lonely prompt"),  # a tree without any reply
    msg("x", None, "prompter", "Q3", review_result=False),
]


def test_best_follows_rank_and_ids_name_paths(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", TREE)
    records, rep = load_records(src)
    assert rep.schema == "tree" and rep.records_read == len(TREE)
    assert [r.id for r in records] == ["r/a0/p/b0"]
    r = records[0]
    assert r.turns == [("user", "Q1"), ("assistant", "A0"), ("user", "Q2"), ("assistant", "B0")]
    assert r.category == "qa" and r.source == f"{src}:6" and r.schema == "tree" and r.index == 0
    # counted: 10 messages, a2 deleted, x failed review, a2c below a filtered message, s has no reply
    assert rep.counts == {"kept": 7, "deleted": 1, "failed_review": 1, "below_out": 1, "no_reply": 1, "paths": 2}
    assert message_sum(rep) == rep.records_read
    summary = rep.summary()
    assert "1 deleted messages filtered" in summary and "of 2 best paths (one per tree): 1 without an assistant " \
        "reply" in summary


def message_sum(rep):
    from mbc_jax.data.trees import MESSAGE_PARTS

    return sum(rep.counts.get(k, 0) for k, _ in MESSAGE_PARTS)


def test_all_gives_every_path_and_cuts_trailing_prompts(tmp_path):
    rows = TREE + [msg("q", "a1", "prompter", "dangling"), msg("q2", "a1", "prompter", "dangling too")]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    records, rep = load_records(src, tree="all")
    # a1 (rank 1) after a0 (rank 0); its two dangling prompts cut off give the same path once
    assert [r.id for r in records] == ["r/a0/p/b0", "r/a0/p/b1", "r/a1"]
    assert [r.index for r in records] == [0, 1, 2]
    assert records[2].turns == [("user", "Q1"), ("assistant", "A1")]
    # paths: r/a0/p/b0, r/a0/p/b1, r/a1/q, r/a1/q2 (both cut back to r/a1, the second merged), s (no reply)
    assert {k: rep.counts.get(k) for k in ("paths", "cut", "merged", "no_reply")} == {
        "paths": 5, "cut": 2, "merged": 1, "no_reply": 1}
    assert rep.counts["paths"] == len(records) + rep.counts["merged"] + rep.counts["no_reply"]
    assert ("of 5 root-to-leaf paths: 2 cut back to their last assistant reply (they ended on an unanswered prompt), "
            "1 merged as duplicates after that cut, 1 without an assistant reply") in rep.summary()
    assert message_sum(rep) == rep.records_read == 12 and "9 messages kept in 2 trees" in rep.summary()


def test_skip_bad_on_a_cycle_and_an_orphan_keeps_the_right_count(tmp_path):
    rows = [msg("r", None, "prompter", "q"), msg("a", "r", "assistant", "A"),
            msg("c1", "c2", "prompter", "x"), msg("c2", "c1", "assistant", "y"),
            msg("o", "nowhere", "prompter", "O"), msg("oa", "o", "assistant", "under the orphan"),
            {"message_id": "bad", "parent_id": "r", "role": "assistant"}]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    records, rep = load_records(src, skip_bad=True)
    assert [r.id for r in records] == ["r/a"]
    assert {k: rep.counts.get(k, 0) for k in ("kept", "cycle", "orphan", "below_out", "unreadable")} == {
        "kept": 2, "cycle": 2, "orphan": 1, "below_out": 1, "unreadable": 1}
    assert message_sum(rep) == rep.records_read == len(rows)
    assert "2 messages kept in 1 trees -> 1 dialogues" in rep.summary() and "1 unreadable messages skipped" \
        in rep.summary()


def test_filters_are_chosen(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", TREE)
    records, rep = load_records(src, tree="all", tree_filter="none")
    ids = [r.id for r in records]
    assert "r/a2" in ids and "x" not in ids and rep.counts.get("deleted") is None  # x: a prompt, no reply
    with pytest.raises(UserError, match=f"no records: 0 messages kept .* {len(TREE)} unreviewed messages filtered"):
        load_records(src, tree_filter="unreviewed")  # nothing has review_result: true
    with pytest.raises(UserError, match="unknown filter 'spam'"):
        load_records(src, tree_filter="deleted,spam")


def test_unranked_replies_come_after_ranked_ones_in_input_order(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", [msg(1, None, "prompter", "q"), msg(2, 1, "assistant", "u1"),
                                             msg(3, 1, "assistant", "u2"), msg(4, 1, "assistant", "r", 0.0)])
    assert [r.id for r in load_records(src, tree="all")[0]] == ["1/4", "1/2", "1/3"]
    assert [r.id for r in load_records(src)[0]] == ["1/4"]


def test_orphan_is_an_error_or_a_counted_skip(tmp_path):
    rows = [msg("r", None, "prompter", "q"), msg("a", "r", "assistant", "A"),
            msg("o", "nowhere", "assistant", "O"), msg("oc", "o", "prompter", "under the orphan")]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_records(src)
    assert str(e.value) == f"{src}:3: parent_id: no message 'nowhere' in the input (an orphan)"
    records, rep = load_records(src, skip_bad=True)
    assert [r.id for r in records] == ["r/a"]
    assert rep.skipped == [(f"{src}:3", str(e.value))] and rep.counts["orphan"] == 1 and rep.counts["below_out"] == 1
    assert "1 orphan messages" in rep.summary() and f"{src}:3: parent_id" in rep.summary()


def test_cycle_is_reported_at_its_first_message(tmp_path):
    rows = [msg("r", None, "prompter", "q"), msg("a", "r", "assistant", "A"),
            msg("c1", "c2", "prompter", "x"), msg("c2", "c3", "assistant", "y"), msg("c3", "c1", "prompter", "z"),
            msg("d", "c2", "prompter", "below the cycle"), msg("self", "self", "assistant", "me")]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_records(src)
    assert str(e.value) == f"{src}:3: parent_id: cycle of replies: c1 -> c2 -> c3 -> c1"
    records, rep = load_records(src, skip_bad=True)
    assert [r.id for r in records] == ["r/a"] and rep.counts["cycle"] == 4 and rep.counts["below_out"] == 1
    assert [s for s, _ in rep.skipped] == [f"{src}:3", f"{src}:7"]
    assert rep.skipped[1][1] == f"{src}:7: parent_id: cycle of replies: self -> self"


TREE_BAD = {
    "empty_assistant": (msg("b", "r", "assistant", "  "), "text", "empty assistant message"),
    "bad_role": (msg("b", "r", "moderator", "x"), "role", "unknown role 'moderator'"),
    "duplicate": (msg("a", "r", "assistant", "again"), "message_id", "'a' again (first at"),
    "no_text": ({"message_id": "b", "parent_id": "r", "role": "assistant"}, "text", "missing"),
    "rank_text": (msg("b", "r", "assistant", "x", "first"), "rank", "expected a number or null, got string"),
    "deleted_text": (msg("b", "r", "assistant", "x", deleted="yes"), "deleted", "expected true, false or null"),
    "no_id": ({"parent_id": "r", "role": "assistant", "text": "x", "message_id": None}, "message_id", "missing"),
}


@pytest.mark.parametrize("name", TREE_BAD)
def test_bad_message(tmp_path, name):
    bad, field, problem = TREE_BAD[name]
    rows = [msg("r", None, "prompter", "q"), msg("a", "r", "assistant", "A"), bad, msg("c", "b", "prompter", "Q")]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_records(src, schema="tree")
    assert str(e.value).startswith(f"{src}:3: {field}: {problem}")
    records, rep = load_records(src, schema="tree", tree="all", skip_bad=True)
    assert [r.id for r in records] == ["r/a"] and rep.skipped[0][0] == f"{src}:3"
    # the reply below the bad message goes with it, counted (or, when the bad one has no usable id, reported
    # as an orphan)
    if name in ("duplicate", "no_id"):
        assert rep.skipped[1][0] == f"{src}:4"
    else:
        assert rep.counts["below_out"] == 1 and len(rep.skipped) == 1


def test_fields_map_a_tree_export(tmp_path):
    rows = [{"id": "r", "reply_to": None, "author": "prompter", "body": "q"},
            {"id": "a", "reply_to": "r", "author": "assistant", "body": ""}]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    spec = "message_id=id,parent_id=reply_to,role=author,text=body"
    with pytest.raises(DataError) as e:
        load_records(src, fields=spec)
    assert str(e.value) == f"{src}:2: body (read as text): empty assistant message"


def _nest(rows, mid):
    """The nested export's shape (OpenAssistant `*.trees.jsonl`): a message with its `replies`, recursively."""
    m = dict(next(r for r in rows if r["message_id"] == mid))
    kids = [_nest(rows, r["message_id"]) for r in rows if r["parent_id"] == mid]
    return {**m, "replies": kids} if kids else m


def test_nested_tree_export_reads_as_the_flat_one(tmp_path):
    # one tree per line, `prompt` holding the first message; nested messages may omit parent_id
    roots = [r["message_id"] for r in TREE if r["parent_id"] is None]
    nested = [{"message_tree_id": r, "tree_state": "ready_for_export", "prompt": _nest(TREE, r)} for r in roots]
    nested[0]["prompt"]["replies"][1]["replies"][0].pop("parent_id")  # p, under a0
    flat_src, nested_src = write_jsonl(tmp_path / "flat.jsonl", TREE), write_jsonl(tmp_path / "trees.jsonl", nested)
    for mode in ("best", "all"):
        flat, flat_rep = load_records(flat_src, tree=mode)
        got, rep = load_records(nested_src, tree=mode)
        assert rep.schema == "tree" and rep.records_read == len(TREE) and rep.counts == flat_rep.counts
        assert [(r.id, r.turns, r.category) for r in got] == [(r.id, r.turns, r.category) for r in flat]
    # r's replies in input order: a1, a0, a2; b0 is a0's child p's second reply
    assert got[0].source == f"{nested_src}:1: prompt.replies[1].replies[0].replies[1]"
    assert rep.summary().startswith(f"{nested_src}: loaded 3 dialogues from 10 messages (schema tree, jsonl)")


def test_nested_tree_errors_name_the_line_and_place(tmp_path):
    tree = {"message_tree_id": "r", "prompt": {**msg("r", None, "prompter", "q"), "replies": [
        msg("a", "r", "assistant", "A"),
        {**msg("b", "r", "assistant", " "), "replies": [msg("c", "b", "prompter", "Q")]},
        msg("d", "zz", "assistant", "D")]}}
    src = write_jsonl(tmp_path / "t.jsonl", [tree])
    with pytest.raises(DataError) as e:
        load_records(src)
    assert str(e.value) == f"{src}:1: prompt.replies[1]: text: empty assistant message"
    records, rep = load_records(src, skip_bad=True)
    assert [r.id for r in records] == ["r/a"] and rep.counts["below_out"] == 1  # c goes with b
    assert [m for _, m in rep.skipped] == [f"{src}:1: prompt.replies[1]: text: empty assistant message",
                                           f"{src}:1: prompt.replies[2]: parent_id: 'zz', but the message is "
                                           "nested in the replies of 'r'"]
