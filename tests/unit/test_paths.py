"""mbc_jax/paths.py and the run folder behind a URL: local paths stay pathlib.Path; every writer and reader
of the run folder gives the same bytes and tables through fsspec's memory:// and the tests' bucket://
emulation (tests/bucket_fs.py) as on a local folder; metrics.jsonl on a URL is stored whole at each flush;
rewind, fetch (local copies, refreshed), staged uploads, orbax's directory, data records and TensorBoard's
mirror from a URL."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path

import bucket_fs
import numpy as np
import pytest
from etils import epath

from conftest import read_tensorboard
from mbc_jax import UserError, paths, trackers
from mbc_jax import config as config_lib
from mbc_jax.data import load_records
from mbc_jax.run_folder import MetricsLog, RunFolder, RunWriter, read_csv, saved_steps, write_csv

bucket_fs.register()

COLUMNS = ("step", "split", "index", "id", "exact_match", "perplexity")


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The root URL of an empty emulated bucket, and where its objects lie."""
    monkeypatch.setenv(bucket_fs.ROOT_ENV, str(tmp_path / "bucket"))
    monkeypatch.setenv("MBC_JAX_CACHE", str(tmp_path / "cache"))
    return "bucket://b"


@pytest.fixture
def mem():
    url = paths.as_path(f"memory://t-{uuid.uuid4().hex}")
    yield str(url)
    if url.exists():
        url.fs.rm(url.key, recursive=True)


def test_local_paths_stay_pathlib_and_urls_become_url_paths():
    for s in ("runs/x", "/abs/runs/x", "C:/x", "hf:org/name", "~/runs"):
        assert type(paths.as_path(s)) is type(Path(s)) and paths.as_path(s) == Path(s), s
        assert not paths.is_url(s)
    assert paths.as_path("file:///tmp/run") == Path("/tmp/run")
    p = Path("x")
    assert paths.as_path(p) is p
    u = paths.as_path("gs://bucket/runs//demo/mbc/")  # no package needed for pure path operations
    assert isinstance(u, paths.UrlPath) and paths.is_url("gs://bucket/x") and paths.is_url(u)
    assert str(u) == "gs://bucket/runs/demo/mbc" and u.name == "mbc" and str(u.parent) == "gs://bucket/runs/demo"
    f = u / "memorization" / "step_00000004.csv"
    assert (f.name, f.stem, f.suffix) == ("step_00000004.csv", "step_00000004", ".csv")
    assert str(f.with_name("a.csv")) == "gs://bucket/runs/demo/mbc/memorization/a.csv"
    assert u.absolute() is u and u.resolve() is u and u == paths.as_path("gs://bucket/runs/demo/mbc")
    with pytest.raises(TypeError):
        os.fspath(u)  # never a local folder named "gs:"


def test_orbax_gets_gs_urls_themselves_local_folders_absolute_and_refuses_others(bucket):
    d = paths.orbax_dir("gs://bucket/run/checkpoints")
    assert isinstance(d, epath.Path) and str(d) == "gs://bucket/run/checkpoints"
    assert paths.orbax_dir("runs/x") == Path("runs/x").absolute()
    assert paths.orbax_dir(f"{bucket}/run/params") == Path(os.environ[bucket_fs.ROOT_ENV]) / "b" / "run" / "params"
    with pytest.raises(UserError, match=r"memory://x/run: orbax writes checkpoints to local \(or mounted\) folders"):
        paths.orbax_dir("memory://x/run")
    with pytest.raises(UserError, match=r"s3://b/run: orbax writes checkpoints to local"):  # with or without s3fs
        paths.orbax_dir("s3://b/run")


@pytest.mark.parametrize("where", ["memory", "bucket"])
def test_atomic_write_and_csv_give_the_local_bytes(tmp_path, bucket, mem, where):
    root = paths.as_path(mem if where == "memory" else bucket + "/run")
    rows = [{"step": 4, "split": "train", "index": i, "id": f"r,{i}\n\"q\"", "exact_match": i / 3,
             "perplexity": float("nan") if i == 1 else 1.5 + i} for i in range(3)]
    for base in (tmp_path / "local", root):
        write_csv(base / "memorization" / "step_00000004.csv", rows, COLUMNS)
        paths.atomic_write(base / "summary.json", json.dumps({"a": 1}) + "\n")
        paths.atomic_write(base / "raw.bin", b"\x00\xff")
    for name in ("memorization/step_00000004.csv", "summary.json", "raw.bin"):
        assert (root / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
        if name != "raw.bin":
            assert (root / name).read_text() == (tmp_path / "local" / name).read_text(), name  # \r\n -> \n
    name = "memorization/step_00000004.csv"
    a, b = read_csv(root / name), read_csv(tmp_path / "local" / name)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert list(a["id"]) == [r["id"] for r in rows] and np.isnan(a["perplexity"][1])
    assert [p.name for p in root.iterdir()] == ["memorization", "raw.bin", "summary.json"]
    newest = (root / "raw.bin").stat().st_mtime
    assert newest > 0 and (root / "raw.bin").stat().st_size == 2
    if where == "memory":  # a folder with no time of its own: its newest object's (what experiments' caches compare)
        assert root.stat().st_mtime == max(p.stat().st_mtime for p in root.iterdir() if p.is_file())
    with pytest.raises(UserError, match=r"/nope.csv: cannot read"):
        read_csv(root / "nope.csv")


def test_bucket_emulation_has_no_append_and_no_rename(bucket):
    p = paths.as_path(bucket + "/f.txt")
    paths.atomic_write(p, "x")
    with pytest.raises(NotImplementedError):
        p.fs.open(p.key, "ab")
    with pytest.raises(NotImplementedError):
        p.fs.mv(p.key, p.key + "2")
    with pytest.raises(ValueError, match="only reading"):
        p.open("a")


def test_metrics_on_a_url_are_stored_whole_at_each_flush_and_rewind_drops_later_lines(bucket, monkeypatch):
    run = paths.as_path(bucket + "/run")
    writer = RunWriter(run)
    recs = [{"step": s, "loss": 1.0 / s} for s in (2, 4)] + [{"step": 4, "eval": True, "x": 0.5}]
    with writer.metrics() as emit:
        assert isinstance(emit, MetricsLog)
        for r in recs:
            emit(r)
        assert not (run / "metrics.jsonl").exists()  # nothing stored before a flush
        emit.flush()
        assert (run / "metrics.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in recs)
        monkeypatch.setattr(MetricsLog, "FLUSH_SECONDS", 0.0)  # a flush on every line once the interval passed
        emit({"step": 6, "loss": 0.25})
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) == {"step": 6, "loss": 0.25}
        emit({"step": 8, "loss": 0.125})
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 4, 6, 8]
    for s in (0, 4, 8):
        writer.write_snapshot(s, [{"step": s, "split": "train", "index": 0}])
    writer.rewind(4)  # a resume from the checkpoint of step 4
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4, 4]
    assert [p.name for p in (run / "memorization").glob("step_*.csv")] == ["step_00000000.csv", "step_00000004.csv"]
    assert writer.last_eval() == recs[2]
    with writer.metrics() as emit:  # a resumed writer keeps the stored lines and adds to them
        emit({"step": 6, "loss": 9.0})
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4, 4, 6]


def test_run_folder_reads_a_url_as_it_reads_a_local_folder(tmp_path, bucket):
    local, url = tmp_path / "run", paths.as_path(bucket + "/runs/mbc")
    for where in (local, url):
        w = RunWriter(where)
        w.write_config({"sampler": "mbc", "learning_rate": 3e-3, "batch_size": 2, "data": "x.jsonl"})
        write_csv(where / "records.csv", [{"index": i, "id": f"r{i}", "category": "c", "split": "train",
                                           "tokens": 5 + i, "response_tokens": 2} for i in range(3)],
                  ("index", "id", "category", "split", "tokens", "response_tokens"))
        for s in (0, 2, 4):
            w.write_snapshot(s, [{"step": s, "split": "train", "index": i, "id": f"r{i}", "exact_match": s / 8 + i / 16}
                                 for i in (2, 0, 1)])
        w.write_summary({"steps": 4})
    a, b = RunFolder.open(str(local)), RunFolder.open(str(url))
    assert isinstance(b.path, paths.UrlPath) and b.label == a.label == "MBC lr 3e-3"
    assert b.memorization_steps() == a.memorization_steps() == [0, 2, 4]
    for x, y in zip(a.record_matrix("exact_match"), b.record_matrix("exact_match")):
        np.testing.assert_array_equal(x, y)
    assert b.record_matrix("exact_match")[2][2].tolist() == [0.5, 0.5625, 0.625]  # step 4, records 0, 1, 2
    assert b.summary() == {"steps": 4} and b.metrics() == [] and b.checkpoint_steps() == []
    assert b.data_path("train") == "x.jsonl"
    with pytest.raises(UserError, match=r"bucket://b/nothing: no such run folder"):
        RunFolder.open(bucket + "/nothing")


def test_fetch_copies_a_url_locally_and_follows_changes(bucket):
    src = paths.as_path(bucket + "/model")
    paths.atomic_write(src / "config.json", '{"a": 1}')
    paths.atomic_write(src / "sub" / "w.bin", b"1234")
    got = paths.fetch(src)
    assert got == paths.cache_dir(src) and (got / "config.json").read_text() == '{"a": 1}'
    assert (got / "sub" / "w.bin").read_bytes() == b"1234"
    paths.atomic_write(src / "config.json", '{"a": 22}')
    (src / "sub" / "w.bin").unlink()
    got = paths.fetch(src)
    assert (got / "config.json").read_text() == '{"a": 22}' and not (got / "sub" / "w.bin").exists()
    one = paths.fetch(src / "config.json")
    assert one.is_file() and one.read_text() == '{"a": 22}'
    local = Path(os.environ["MBC_JAX_CACHE"])
    assert paths.fetch(local) is local


def test_staged_uploads_what_a_local_only_writer_wrote(bucket, tmp_path):
    dest = paths.as_path(bucket + "/export")
    with paths.staged(dest) as folder:
        (folder / "config.json").write_text("{}")
        (folder / "d").mkdir()
        (folder / "d" / "t.json").write_text("[1]")
    assert (dest / "config.json").read_text() == "{}" and (dest / "d" / "t.json").read_text() == "[1]"
    with paths.staged(tmp_path / "x") as folder:
        assert folder == tmp_path / "x"


def test_records_load_from_a_url_as_from_a_local_file(tmp_path, bucket):
    rows = [{"prompt": f"p{i}", "completion": f"r{i}"} for i in range(4)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "d.jsonl").write_text(text)
    paths.atomic_write(bucket + "/d.jsonl", text)
    paths.atomic_write(bucket + "/d.jsonl.gz", gzip.compress(text.encode()))
    want, _ = load_records(tmp_path / "d.jsonl")
    for url in (bucket + "/d.jsonl", bucket + "/d.jsonl.gz"):
        got, report = load_records(url)
        assert len(got) == 4 and [(r.index, r.turns) for r in got] == [(r.index, r.turns) for r in want]
    paths.atomic_write(bucket + "/bad.jsonl", text + "{oops\n")
    with pytest.raises(UserError, match=r"bucket://b/bad.jsonl:5: .*malformed JSON"):
        load_records(bucket + "/bad.jsonl")
    with pytest.raises(UserError, match=r"bucket://b/none.jsonl: no such file"):
        load_records(bucket + "/none.jsonl")


def test_tensorboard_of_a_url_run_is_written_locally_and_uploaded(bucket):
    pytest.importorskip("tensorboardX")
    cfg = config_lib.load(None, ["tracker=[jsonl,tensorboard]"])
    run = paths.as_path(bucket + "/run")
    (tb,) = trackers.open_trackers(cfg, run, 0, resumed=False)
    for s in (1, 2, 3):
        tb.log({"step": s, "loss": 4.0 - s}, s)
    assert not (run / "tensorboard").exists()  # uploaded every UPLOAD_SECONDS and at the end
    tb.close()
    assert read_tensorboard(paths.fetch(run / "tensorboard"))["train/loss"] == {1: 3.0, 2: 2.0, 3: 1.0}
    (tb,) = trackers.open_trackers(cfg, run, 2, resumed=True)  # the remote events make the rerun purge
    tb.log({"step": 3, "loss": 7.0}, 3)
    tb.close()
    assert read_tensorboard(paths.fetch(run / "tensorboard"))["train/loss"] == {1: 3.0, 2: 2.0, 3: 7.0}



def test_a_table_file_from_a_url_is_read_from_a_local_copy_and_named_by_its_url(bucket, monkeypatch):
    from mbc_jax.data import tables

    seen = []

    def fake_table(path, kind):  # stands in for datasets' reader: rows named by the path it was given
        seen.append((path, Path(path).read_text(), kind))
        yield f"{path}:2", {"prompt": "p0", "completion": "r0"}, None
        yield f"{path}:3", {"prompt": "p1"}, None

    monkeypatch.setattr(tables, "iter_table", fake_table)
    paths.atomic_write(bucket + "/d.csv", "prompt,completion\np0,r0\np1,\n")
    with pytest.raises(UserError, match=r"^bucket://b/d.csv:3: completion: missing"):
        load_records(bucket + "/d.csv")
    assert seen[0] == (str(paths.cache_dir(bucket + "/d.csv")), "prompt,completion\np0,r0\np1,\n", "csv")
    got, report = load_records(bucket + "/d.csv", skip_bad=True)
    assert [r.turns for r in got] == [[("user", "p0"), ("assistant", "r0")]] and report.format == "csv"
    assert report.skipped[0][0] == "bucket://b/d.csv:3"


def test_a_checkpoint_behind_a_url_counts_once_orbax_committed_it(bucket, tmp_path):
    """gs://: orbax writes <step>/ in place, _CHECKPOINT_METADATA first and commit_success.txt last."""
    url = paths.as_path(bucket + "/run/params")
    for step, marks in {0: ["_CHECKPOINT_METADATA", "commit_success.txt"], 4: ["_CHECKPOINT_METADATA"],
                        8: ["commit_success.txt"], 12: ["_CHECKPOINT_METADATA", "commit_success.txt"]}.items():
        for m in marks:
            paths.atomic_write(url / str(step) / m, "x")
            paths.atomic_write(tmp_path / "local" / str(step) / m, "x")
    paths.atomic_write(url / "16.orbax-checkpoint-tmp-1" / "_CHECKPOINT_METADATA", "x")
    assert saved_steps(url) == [0, 12]  # 4: still being written; 8: no metadata
    assert saved_steps(tmp_path / "local") == [0, 4, 12]  # local: complete once renamed to <step>
    assert saved_steps(bucket + "/nothing") == []
