"""`tans compact` and sealed segments: the committed results moved out of their per-job files
into a few large ones, read exactly as before, on both backends; a crash at any point loses
and doubles nothing; a damaged segment is an error, never a gap; verify checks them."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from tans.pipeline.commands.compact import compact_zoo
from tans.pipeline.commands.verify import verify_zoo
from tans.zoo_schema import layout, sealed
from tans.zoo_schema.manifest import BaseWeights, Manifest, ensure_manifest
from tans.zoo_schema.records import to_table
from tans.zoo_schema.results import (
    CommittedResults,
    find_result,
    read_results,
    read_segments,
    result_columns,
    result_key,
    results_table,
    scan_results,
    write_snapshot,
)
from tans.zoo_schema.store import S3Settings, open_store
from tests.helpers import result


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        store = open_store(str(tmp_path / "zoo"))
    else:
        server = request.getfixturevalue("s3_server")
        store = open_store(f"s3://{request.getfixturevalue('s3_bucket')}/zoo", S3Settings(endpoint_url=server.url))
    make_zoo(store)
    return store


def make_zoo(store) -> None:
    manifest = Manifest(1.0, [3], [3], [2], 0, [8, 3, 32, 32], BaseWeights("random", "random-seed0", seed=0))
    ensure_manifest(store, manifest)


def commit(store, n0: int, n1: int) -> list:
    """Result files of jobs n0..n1-1 (three datasets), each with its own checkpoint, as the
    workers commit them."""
    rows = []
    for n in range(n0, n1):
        r = result(f"d{n % 3}", "arch", n / 1000, n)
        data = f"weights of {n}".encode()
        sha = hashlib.sha256(data).hexdigest()
        key = layout.checkpoint_key(r.job_id, sha)
        store.write_bytes(key, data)
        r = dataclasses.replace(r, functional_embedding=[float(n), 1.0], checkpoint_uri=key, checkpoint_sha256=sha)
        store.write_table(result_key(r), to_table([r]), create_only=True)
        rows.append(r)
    return rows


def ordered(rows) -> list:
    return sorted(rows, key=lambda r: (r.dataset_id, r.job_id))


def everything(store) -> tuple:
    """What every reader returns, to compare before and after a compaction."""
    columns = result_columns(store, ["accuracy", "arch"]).sort_by(
        [("dataset_id", "ascending"), ("job_id", "ascending")]
    )
    return (
        read_results(store),
        read_results(store, light=True),
        results_table(store),
        results_table(store, embeddings=False),
        columns.select(["dataset_id", "job_id", "accuracy", "arch"]),
    )


def test_compaction_moves_the_rows_and_every_reader_reads_the_same(store):
    rows = commit(store, 0, 40)
    write_snapshot(store, rows[:30])  # the snapshot a little behind, as a build leaves it
    before = everything(store)
    assert before[0] == ordered(rows)

    report = compact_zoo(store, log=lambda *_: None)
    assert (report.sealed_rows, report.files_deleted, report.segments, report.sealed_total) == (40, 40, 1, 40)
    assert store.list(layout.RESULTS) == [] and read_segments(store) == []  # files and cache gone
    after = everything(store)
    assert after[0] == before[0] and after[1] == before[1]
    assert all(a.equals(b) for a, b in zip(after[2:], before[2:]))
    assert scan_results(store).outside_snapshot == 0

    job = rows[7]
    assert find_result(store, job.job_id) == job  # from its row group, with its embedding
    live = CommittedResults.listed(store)
    assert len(live) == 40 and live[job.job_id] == job and live.dataset_counts() == {"d0": 14, "d1": 13, "d2": 13}

    rows += commit(store, 40, 60)  # the build goes on: new files beside the sealed rows
    write_snapshot(store, rows)  # the driver's refresh caches only the files' rows
    assert sum(s.rows for s in read_segments(store)) == 20
    assert read_results(store) == ordered(rows)
    report = compact_zoo(store, log=lambda *_: None)  # a second segment, half the first: merged with it
    assert (report.sealed_rows, report.segments_merged, report.merged_into) == (20, 2, 1)
    assert (report.segments, report.sealed_total) == (1, 60)
    assert read_results(store) == ordered(rows) and store.list(layout.RESULTS) == []
    assert all(a.equals(b) for a, b in zip(everything(store)[2:], (results_table(store), results_table(store, False))))
    report = compact_zoo(store, log=lambda *_: None)
    assert (report.sealed_rows, report.segments_merged) == (0, 0)  # nothing new: nothing written
    assert len(store.list(layout.SEALED)) == 3
    assert verify_zoo(store, log=lambda *_: None).problems == []


def test_small_segments_are_merged_in_age_order_and_large_ones_left(tmp_path, monkeypatch):
    """Each compaction of a few jobs adds a small segment; the next merges small ones that
    are neighbours in age (below MERGE_BELOW rows, the newer at least half the older, up to
    SEAL_ROWS), and leaves large ones. A job sealed twice keeps its older row through a
    merge; a merge cut short after its new segments loses and doubles nothing, and `tans
    verify` deletes what they replaced."""
    from tans.pipeline.commands import compact

    monkeypatch.setattr(compact, "MERGE_BELOW", 6)
    monkeypatch.setattr(compact, "MERGE_FLOOR", 1)
    monkeypatch.setattr(compact, "SEAL_ROWS", 10)
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 8)  # large: 8 rows
    big = sealed.write_sealed(store, to_table(rows))
    for n in range(8, 20, 2):  # six small segments of two rows each
        rows += commit(store, n, n + 2)
        sealed.write_sealed(store, to_table(rows[n : n + 2]))
    twice = dataclasses.replace(rows[9], accuracy=0.5)  # rows[9] sealed again, later
    sealed.write_sealed(store, to_table([twice]))
    for key in store.list(layout.RESULTS):
        store.delete(key)
    before = everything(store)
    assert before[0] == ordered(rows)  # each job once, its oldest segment's row

    assert compact_zoo(store, dry_run=True).as_dict() | {"zoo": ""} == {
        **compact.CompactReport(zoo="", dry_run=True).as_dict(),
        "segments_merged": 6,  # the six small ones: 2+2+2 | 2+2+2; the late one of 1 stays
        "merged_into": 2,
        "segments": 4,
        "sealed_total": 20,  # rows[9] once
    }
    assert len(sealed.live(sealed.manifests(store))) == 8  # the dry run merged nothing
    real_delete = store.delete

    def crash(key):  # both merged segments are written, then the process dies
        if key.startswith(layout.SEALED):
            raise KeyboardInterrupt
        real_delete(key)

    monkeypatch.setattr(store, "delete", crash)
    with pytest.raises(KeyboardInterrupt):
        compact_zoo(store, log=lambda *_: None)
    monkeypatch.setattr(store, "delete", real_delete)
    live = sealed.live(sealed.manifests(store))
    assert [s.rows for s in live] == [8, 6, 6, 1] and live[0] == big  # the large one untouched
    assert len(sealed.manifests(store)) == 10  # and what the merges replaced is still there
    after = everything(store)
    assert after[0] == before[0] and after[1] == before[1]  # rows[9] still its older row
    assert all(a.equals(b) for a, b in zip(after[2:], before[2:]))
    assert find_result(store, rows[9].job_id) == rows[9]

    report = compact_zoo(store, log=lambda *_: None)  # nothing more to merge; the replaced ones stay for verify
    assert (report.segments_merged, report.segments, report.sealed_total) == (0, 4, 20)
    report = verify_zoo(store, log=lambda *_: None)  # deletes them; the late row comes out of the newer segment
    assert [(p.job_id, p.repair) for p in report.problems] == [(rows[9].job_id, "none: the older row stays the commit")]
    assert [s.rows for s in sealed.live(sealed.manifests(store))] == [8, 6, 6]  # no empty segment left
    assert len(sealed.manifests(store)) == 3 and len(store.list(layout.SEALED)) == 9
    assert compact_zoo(store, log=lambda *_: None).segments_merged == 0  # packed as far as it goes
    assert everything(store)[0] == before[0]


@pytest.mark.parametrize("chunk", [1, 500, 20_000])
def test_compacting_after_every_few_jobs_keeps_few_segments_and_rewrites_each_row_a_few_times(chunk):
    """The merge rule over many compactions, each adding one segment of `chunk` rows: the
    small segments stay about log2(MERGE_BELOW / MERGE_FLOOR), a row is rewritten while its
    segment has at most 2 x MERGE_FLOOR rows, then at most log1.5(MERGE_BELOW / MERGE_FLOOR)
    + 1 times (merging every small segment at each compaction rewrote a growing one each time:
    62,500 / chunk times), and groups are neighbours."""
    import math

    import numpy as np

    from tans.pipeline.commands.compact import MERGE_BELOW, MERGE_FLOOR, SEAL_ROWS, merge_groups

    segments: list[tuple[int, int]] = []  # each segment's compactions [first, last + 1), oldest first
    rewrites = np.zeros(3 * MERGE_BELOW // chunk, np.int64)  # per compaction's rows
    for n in range(len(rewrites)):
        segments.append((n, n + 1))
        groups = merge_groups([(hi - lo) * chunk for lo, hi in segments])
        for group in groups:
            assert group == list(range(group[0], group[-1] + 1)) and len(group) > 1
            lo, hi = segments[group[0]][0], segments[group[-1]][1]
            assert (hi - lo) * chunk <= SEAL_ROWS
            rewrites[lo:hi] += 1
        merged = {g[0]: (segments[g[0]][0], segments[g[-1]][1]) for g in groups}
        inside = {i for g in groups for i in g}
        segments = [merged.get(i, s) for i, s in enumerate(segments) if i in merged or i not in inside]
        assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))  # neighbours: age order kept
        small = [s for s in segments if (s[1] - s[0]) * chunk < MERGE_BELOW]
        assert len(small) <= math.log2(MERGE_BELOW / max(chunk, MERGE_FLOOR)) + 1
    assert rewrites.max() <= 2 * MERGE_FLOOR / chunk + math.log(MERGE_BELOW / max(chunk, MERGE_FLOOR), 1.5) + 1
    large = [hi - lo for lo, hi in segments if (hi - lo) * chunk >= MERGE_BELOW]
    assert large and sum(large) * chunk > len(rewrites) * chunk - 2 * MERGE_BELOW  # the old rows are in large ones


def test_a_damaged_small_segment_is_not_merged_and_a_reader_during_a_merge_reads_every_row(tmp_path, monkeypatch):
    """A small segment whose file no longer matches its sha256 is left out of the merge (a
    barrier between its neighbours) and named for `tans verify`: merged, its bad bytes would
    get a fresh sha256. A reader that listed the segments before a merge deleted them lists
    again and reads every row once, never a silent gap."""
    from tans.pipeline.commands import compact

    monkeypatch.setattr(compact, "MERGE_BELOW", 6)
    monkeypatch.setattr(compact, "MERGE_FLOOR", 1)
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = []
    for n in range(0, 10, 2):  # five small segments
        rows += commit(store, n, n + 2)
        sealed.write_sealed(store, to_table(rows[n : n + 2]))
    for key in store.list(layout.RESULTS):
        store.delete(key)
    segments = sealed.live(sealed.manifests(store))
    damaged = segments[2].keys[2]  # the middle one's embeddings file: flipped bytes, same size
    data = bytearray(store.read_bytes(damaged))
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(damaged, bytes(data))

    real_list, merged = store.list, []

    def list_then_merge(prefix):  # a reader lists; a compaction merges before it reads the manifests
        keys = real_list(prefix)
        if prefix == layout.SEALED and not merged:
            merged.append(None)  # the compaction's own listings pass through
            merged[0] = compact_zoo(store, log=lambda *_: None)
        return keys

    monkeypatch.setattr(store, "list", list_then_merge)
    table = sealed.sealed_table(store, light=True)  # listed before the merge, read after it
    monkeypatch.setattr(store, "list", real_list)
    assert sorted(table["job_id"].to_pylist()) == sorted(r.job_id for r in rows)
    report = merged[0]
    assert (report.segments_merged, report.merged_into, report.segments) == (4, 2, 3)
    assert report.unusable == [(segments[2].keys[0], "sealed segment damaged: not merged")]
    assert [s.rows for s in sealed.live(sealed.manifests(store))] == [4, 2, 4]
    assert sealed.live(sealed.manifests(store))[1] == segments[2]


def test_a_dry_run_changes_nothing(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    commit(store, 0, 5)

    def keys():
        return [k for p in ("results", "results_index", layout.SEALED, "journal", "checkpoints") for k in store.list(p)]

    before = keys()
    report = compact_zoo(store, dry_run=True)
    assert report.dry_run and report.sealed_rows == 5 and report.files_deleted == 0
    assert keys() == before


def test_a_crash_after_sealing_leaves_each_job_once_and_the_next_run_finishes(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 12)
    real_delete, deleted = store.delete, []

    def crash_after_two(key):
        if key.startswith(f"{layout.RESULTS}/") and len(deleted) == 2:
            raise KeyboardInterrupt
        deleted.append(key)
        real_delete(key)

    monkeypatch.setattr(store, "delete", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        compact_zoo(store, log=lambda *_: None)
    monkeypatch.setattr(store, "delete", real_delete)
    assert len(store.list(layout.RESULTS)) == 10  # sealed, 10 files not yet deleted
    assert read_results(store) == ordered(rows)  # each job once
    assert results_table(store).num_rows == 12 and len(CommittedResults.listed(store)) == 12
    report = compact_zoo(store, log=lambda *_: None)
    assert (report.sealed_rows, report.duplicates, report.files_deleted, report.segments) == (0, 10, 10, 1)
    assert read_results(store) == ordered(rows)


def test_a_crash_before_the_manifest_leaves_the_zoo_as_it_was(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 6)
    real_write = store.write_bytes

    def crash_at_manifest(key, data, create_only=False):
        if key.endswith(".json") and key.startswith(layout.SEALED):
            raise KeyboardInterrupt
        return real_write(key, data, create_only)

    monkeypatch.setattr(store, "write_bytes", crash_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        compact_zoo(store, log=lambda *_: None)
    monkeypatch.undo()
    assert read_results(store) == ordered(rows) and len(store.list(layout.RESULTS)) == 6
    report = verify_zoo(store, dry_run=True)
    assert len(report.orphans) == 2 and all(k.startswith(layout.SEALED) for k in report.orphans)


def test_a_late_file_of_a_sealed_job_never_replaces_its_row(tmp_path):
    """Exactly once: the sealed row was committed first; a second commit of the job (a worker
    that outlived its build) is left out by readers and deleted by the next compaction."""
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 4)
    compact_zoo(store, log=lambda *_: None)
    late = dataclasses.replace(rows[1], accuracy=0.99)
    store.write_table(result_key(late), to_table([late]), create_only=True)
    assert read_results(store) == ordered(rows)
    assert results_table(store, embeddings=False).num_rows == 4
    assert CommittedResults.listed(store)[late.job_id] == rows[1]
    assert find_result(store, late.job_id) == rows[1]
    assert verify_zoo(store, log=lambda *_: None).problems == []
    store.write_bytes(f"{layout.RESULTS}/stray.parquet", b"a user's file")  # left alone, reported
    report = compact_zoo(store, log=lambda *_: None)
    assert (report.duplicates, report.files_deleted, report.sealed_rows) == (1, 1, 0)
    assert report.unusable == [(f"{layout.RESULTS}/stray.parquet", "not the name of a result file")]
    assert store.exists(f"{layout.RESULTS}/stray.parquet")


def test_a_replaced_segment_never_comes_back(tmp_path):
    """Replacing names every segment its predecessors replaced: a crash that leaves an old
    manifest behind never brings its rows back, however many replacements later."""
    store = open_store(str(tmp_path / "zoo"))
    rows = commit(store, 0, 6)
    a = sealed.write_sealed(store, to_table(rows))
    kept = {k: store.read_bytes(k) for k in a.keys}
    b = sealed.replace(store, [a], to_table(rows[:4]))
    for key, data in kept.items():  # as if the deletion of a had not happened (a crash)
        store.write_bytes(key, data)
    assert sealed.sealed_table(store, light=True).num_rows == 4
    c = sealed.replace(store, [b], to_table(rows[:2]))
    assert a.token in c.replaces and [s.token for s in sealed.live(sealed.manifests(store))] == [c.token]
    assert sealed.sealed_table(store, light=True)["job_id"].to_pylist() == [r.job_id for r in rows[:2]]


@pytest.mark.parametrize("damage", ["scalars", "embeddings", "manifest"])
def test_a_damaged_segment_is_an_error_and_verify_sets_it_aside(tmp_path, damage):
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 5)
    compact_zoo(store, log=lambda *_: None)
    (segment,) = sealed.manifests(store)
    manifest, scalars, embeddings = segment.keys
    target = {"scalars": scalars, "embeddings": embeddings, "manifest": manifest}[damage]
    store.write_bytes(target, b"not what tans wrote")
    with pytest.raises(sealed.SealedError, match="tans verify"):
        read_results(store)  # never a silent gap: a resume would train those jobs again
    report = verify_zoo(store, log=lambda *_: None)
    assert [p.key for p in report.problems] == [manifest]
    assert store.exists(f"{layout.QUARANTINE}/{manifest}")
    assert read_results(store) == []  # set aside: a later build trains the jobs again
    assert len(rows) == 5


def test_verify_takes_a_damaged_row_out_of_its_segment(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 6)
    compact_zoo(store, log=lambda *_: None)
    bad = rows[2]
    store.write_bytes(bad.checkpoint_uri, b"bit rot")
    report = verify_zoo(store, dry_run=True)
    assert [(p.problem, p.job_id) for p in report.problems] == [("checkpoint sha256 mismatch", bad.job_id)]
    assert read_results(store) == ordered(rows)  # a dry run changes nothing
    report = verify_zoo(store, log=lambda *_: None)
    assert read_results(store) == ordered(r for r in rows if r is not bad)
    target, reason = layout.quarantine_keys(result_key(bad))
    assert store.exists(target) and "sha256" in json.loads(store.read_bytes(reason))["reason"]
    assert store.exists(layout.quarantine_keys(bad.checkpoint_uri)[0])
    assert len(sealed.live(sealed.manifests(store))) == 1 and len(sealed.manifests(store)) == 1
    assert verify_zoo(store, log=lambda *_: None).problems == []


def test_status_after_compaction_equals_status_before_and_reads_the_summaries(tmp_path, monkeypatch):
    import numpy as np

    from tans.pipeline.acquisition.priors import PROFILES_KEY
    from tans.pipeline.commands.status import zoo_status
    from tans.zoo_schema.records import DatasetRecord
    from tests.helpers import DATASETS, POOL, make_prior

    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    profiles = make_prior().profiles
    store.write_table(PROFILES_KEY, to_table(list(profiles.values())))
    for d in DATASETS[:3]:
        store.write_table(
            layout.dataset_key(d), to_table([DatasetRecord(d, d, 2, ["a", "b"], 8, 2, "x", "0", 0, 0, "t")])
        )
    rng = np.random.default_rng(0)
    for n in range(120):
        r = result(DATASETS[int(rng.integers(3))], POOL[int(rng.integers(len(POOL)))], float(rng.uniform()), n)
        r = dataclasses.replace(
            r, created_at=f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}", latency_ms=float(rng.uniform(1, 9))
        )
        store.write_table(result_key(r), to_table([r]), create_only=True)
        if n == 59:
            compact_zoo(store, log=lambda *_: None)  # half sealed, half in files
    before = zoo_status(store)
    compact_zoo(store, log=lambda *_: None)
    import tans.pipeline.commands.status as status_module

    def recomputed(points):
        raise AssertionError("a dataset's hypervolumes were recomputed although the summaries hold")

    monkeypatch.setattr(status_module, "hypervolume_after", recomputed)
    after = zoo_status(store)
    assert dataclasses.replace(after, retriever=None) == dataclasses.replace(before, retriever=None)
    assert after.finished_jobs == 120


def test_the_command_line(tmp_path, capsys):
    from tans.pipeline.cli.main import main

    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    commit(store, 0, 3)
    assert main(["compact", store.uri, "--dry-run"]) == 0
    assert "would seal (--dry-run) 3 result(s)" in capsys.readouterr().out
    assert main(["compact", store.uri, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sealed_rows"] == 3 and report["files_deleted"] == 3 and report["segments"] == 1
    assert main(["compact", store.uri]) == 0
    assert "sealed 0 result(s) into no new segment" in capsys.readouterr().out
    assert main(["compact", str(tmp_path / "nozoo")]) == 3
    assert "tans" in capsys.readouterr().err


def test_a_job_whose_result_is_sealed_is_not_trained_again(tmp_path):
    """A worker (a resumed build, `tans finetune` run twice) finds the job's sealed row and
    returns it: its dataset is not even in this zoo, so training it would fail."""
    from tans.workers.job import JobSpec, TrainSettings
    from tans.workers.run import run_job

    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    spec = JobSpec("d0", "0" * 64, 2, "arch", TrainSettings(), 1.0, BaseWeights("random", "r0"), 0, (8, 3, 32, 32))
    (row,) = commit(store, 0, 1)
    store.delete(result_key(row))
    row = dataclasses.replace(row, job_id=spec.job_id)
    store.write_table(result_key(row), to_table([row]), create_only=True)
    compact_zoo(store, log=lambda *_: None)
    assert not store.exists(spec.result_key)
    assert run_job(spec, store.uri) == row


def test_a_search_listed_before_a_compaction_still_loads_its_records(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 6)
    live = CommittedResults.listed(store)  # a search begins ...
    compact_zoo(store, log=lambda *_: None)  # ... and the files go meanwhile
    assert [live[r.job_id] for r in rows] == rows
    listed = CommittedResults.listed(store)
    sealed.replace(store, sealed.manifests(store), results_table(store))  # verify or a merge replaces the segment
    assert [listed[r.job_id] for r in rows] == rows


def test_verify_checks_a_file_of_a_job_whose_sealed_row_it_takes_out(tmp_path):
    """A compaction cut short leaves a file beside the sealed row; when the row's checkpoint
    is damaged, the file (same checkpoint) is checked and set aside in the same run."""
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 4)
    kept = store.read_bytes(result_key(rows[1]))
    compact_zoo(store, log=lambda *_: None)
    store.write_bytes(result_key(rows[1]), kept)  # as if its deletion had not happened
    store.delete(rows[1].checkpoint_uri)
    verify_zoo(store, log=lambda *_: None)
    assert read_results(store) == ordered(r for r in rows if r is not rows[1])
    assert verify_zoo(store, log=lambda *_: None).problems == []
    assert store.exists(layout.quarantine_keys(result_key(rows[1]))[0])  # the row, and the file after it
    assert store.exists(layout.quarantine_keys(result_key(rows[1]) + ".2")[0])


def test_setting_a_damaged_segment_aside_never_brings_back_what_it_replaced(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 4)
    compact_zoo(store, log=lambda *_: None)
    (a,) = sealed.manifests(store)
    kept = {k: store.read_bytes(k) for k in a.keys}
    store.delete(rows[2].checkpoint_uri)
    verify_zoo(store, log=lambda *_: None)  # b replaces a, without rows[2]
    for key, data in kept.items():  # a's deletion lost
        store.write_bytes(key, data)
    (b,) = sealed.live(sealed.manifests(store))
    store.write_bytes(b.keys[1], b"damaged")
    report = verify_zoo(store, log=lambda *_: None)
    assert [p.key for p in report.problems] == [b.keys[0]]
    assert read_results(store) == []  # a is set aside with b: rows[2] does not come back
    assert sealed.manifests(store) == []


def test_a_manifest_that_is_not_an_object_is_set_aside_with_its_files(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    commit(store, 0, 3)
    compact_zoo(store, log=lambda *_: None)
    (segment,) = sealed.manifests(store)
    store.write_bytes(segment.keys[0], b"[]")
    with pytest.raises(sealed.SealedError, match="tans verify"):
        find_result(store, "anything")
    report = verify_zoo(store, clean_orphans=True, min_age_s=0, log=lambda *_: None)
    assert report.orphans == [] and [p.key for p in report.problems] == [segment.keys[0]]
    assert all(store.exists(layout.quarantine_keys(k)[0]) for k in segment.keys)  # nothing deleted
    assert read_results(store) == []


def test_verify_takes_a_row_sealed_twice_out_of_the_newer_segment(tmp_path):
    """The lease keeps two compactions from sealing one file twice; should it happen (a lease
    broken by hand), verify keeps the older row and takes the newer out."""
    store = open_store(str(tmp_path / "zoo"))
    make_zoo(store)
    rows = commit(store, 0, 4)
    sealed.write_sealed(store, to_table(rows[:3]))
    sealed.write_sealed(store, to_table([dataclasses.replace(rows[2], accuracy=0.5), rows[3]]))
    assert read_results(store) == ordered(rows)  # each job once, the older segment's row
    assert results_table(store, embeddings=False).num_rows == 4
    report = verify_zoo(store, log=lambda *_: None)
    assert [(p.job_id, p.repair) for p in report.problems] == [(rows[2].job_id, "none: the older row stays the commit")]
    assert sealed.sealed_table(store, light=True).num_rows == 4
    assert verify_zoo(store, log=lambda *_: None).problems == []
