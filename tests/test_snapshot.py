"""The results snapshot: a few large segments (scalar columns and embeddings apart) that cache
the per-job commits, refreshed by appending and merging, and read only where its rows' files
are still listed."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tans.zoo_schema import layout
from tans.zoo_schema.records import to_table
from tans.zoo_schema.results import (
    SNAPSHOT_KEY,
    read_results,
    read_segments,
    result_key,
    results_table,
    scan_results,
    write_snapshot,
)
from tans.zoo_schema.store import open_store
from tests.helpers import result


def commit(store, n0: int, n1: int) -> list:
    """Result files of jobs n0..n1-1 (two datasets), as the workers commit them."""
    rows = []
    for n in range(n0, n1):
        r = dataclasses.replace(result(f"d{n % 2}", "arch", n / 1000, n), functional_embedding=[float(n), 1.0])
        store.write_table(result_key(r), to_table([r]), create_only=True)
        rows.append(r)
    return rows


def segment_files(store) -> set[str]:
    return set(store.list(layout.SEGMENTS))


def test_refreshes_keep_few_segments_and_every_row(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    rows = []
    for start in range(0, 1000, 64):  # the driver's cadence: a refresh every 64 commits
        rows += commit(store, start, min(start + 64, 1000))
        write_snapshot(store, rows)
        segments = read_segments(store)
        assert sum(s.rows for s in segments) == len(rows)  # each row once
        assert len(segments) <= math.log2(len(rows) / 64) + 2
        assert segment_files(store) == {k for s in segments for k in s.keys}  # merged-away files deleted
    scan = scan_results(store)
    assert scan.outside_snapshot == 0 and scan.results == sorted(rows, key=lambda r: (r.dataset_id, r.job_id))
    full = results_table(store)
    scalars = results_table(store, embeddings=False)
    assert "functional_embedding" not in scalars.column_names
    assert scalars.equals(full.drop_columns(["functional_embedding"]))
    assert full.equals(to_table(scan.results))
    write_snapshot(store, rows)  # nothing new: nothing is written
    assert segment_files(store) == {k for s in read_segments(store) for k in s.keys}


def test_the_snapshot_never_outvotes_the_commits(tmp_path):
    """A row of a segment counts only while its file is listed; rows committed after the last
    refresh come from their files; a damaged or missing segment is read from the files."""
    store = open_store(str(tmp_path / "zoo"))
    rows = commit(store, 0, 100)
    write_snapshot(store, rows)
    store.delete(result_key(rows[0]))  # set aside (quarantine) after the refresh
    rows += commit(store, 100, 110)  # committed since
    expected = sorted(rows[1:], key=lambda r: (r.dataset_id, r.job_id))
    scan = scan_results(store)
    assert scan.results == expected and scan.outside_snapshot == 10
    assert results_table(store).equals(to_table(expected))
    light = read_results(store, light=True)
    assert light == [dataclasses.replace(r, functional_embedding=[]) for r in expected]

    segment = read_segments(store)[0]
    scalars, embeddings = segment.keys
    store.write_bytes(embeddings, b"not parquet")
    assert read_results(store) == expected  # the full read falls back to the files
    assert read_results(store, light=True) == light  # the light read does not need that file
    store.delete(scalars)
    assert scan_results(store).outside_snapshot == len(expected) and read_results(store) == expected
    write_snapshot(store, rows[1:])  # the next refresh writes those rows again
    assert scan_results(store).outside_snapshot == 0
    assert segment_files(store) == {k for s in read_segments(store) for k in s.keys}


def test_a_zoo_with_the_one_file_snapshot_is_read_and_migrated(tmp_path):
    store = open_store(str(tmp_path / "zoo"))
    rows = commit(store, 0, 20)
    store.write_table(SNAPSHOT_KEY, to_table(rows[:15]))  # what versions before segments wrote
    scan = scan_results(store)
    assert scan.outside_snapshot == 5 and len(scan.results) == 20
    assert results_table(store, embeddings=False).num_rows == 20
    write_snapshot(store, rows)
    assert not store.exists(SNAPSHOT_KEY) and sum(s.rows for s in read_segments(store)) == 20
    assert scan_results(store).outside_snapshot == 0


def test_an_unreadable_index_means_reading_the_files(tmp_path, caplog):
    store = open_store(str(tmp_path / "zoo"))
    rows = commit(store, 0, 10)
    write_snapshot(store, rows)
    store.write_bytes(layout.SNAPSHOT_INDEX, b"{not json")
    assert scan_results(store).outside_snapshot == 10 and len(read_results(store)) == 10
    assert "unreadable" in caplog.text


@pytest.mark.parametrize("orphan", ["0" * 32 + ".parquet", "f" * 32 + ".embeddings.parquet"])
def test_verify_sets_aside_only_segments_the_index_does_not_name(tmp_path, orphan):
    from tans.pipeline.commands.verify import verify_zoo

    store = open_store(str(tmp_path / "zoo"))
    write_snapshot(store, commit(store, 0, 5))
    named = segment_files(store)
    store.write_bytes(f"{layout.SEGMENTS}/{orphan}", b"left by a refresh cut short")
    store.write_bytes(f"{layout.SEGMENTS}/notes.txt", b"a user's file")
    report = verify_zoo(store, dry_run=True)
    assert report.orphans == [f"{layout.SEGMENTS}/{orphan}"]
    assert report.foreign == [f"{layout.SEGMENTS}/notes.txt"]
    assert named <= set(store.list(layout.SEGMENTS))


def test_status_from_the_snapshots_summaries_equals_status_from_every_row(tmp_path, monkeypatch):
    """`tans status` takes each dataset's front and hypervolume history from the summaries the
    driver writes into the segments, and recomputes only the datasets where they no longer
    hold (a row set aside, rows committed since, rows out of commit order); the figures equal
    those computed from every record, and the history equals `hv_history`'s."""
    import numpy as np

    from tans.pipeline.acquisition.hypervolume import dataset_hypervolumes, hv_history, summarize_rows
    from tans.pipeline.acquisition.priors import PROFILES_KEY
    from tans.pipeline.commands.status import history_marks, zoo_status
    from tans.zoo_schema.records import DatasetRecord
    from tans.zoo_schema.results import read_state
    from tests.helpers import DATASETS, POOL, make_prior

    store = open_store(str(tmp_path / "zoo"))
    profiles = make_prior().profiles
    store.write_table(PROFILES_KEY, to_table(list(profiles.values())))
    for d in DATASETS[:3]:  # d3 has results but no record: it counts in the history once seen
        store.write_table(
            layout.dataset_key(d), to_table([DatasetRecord(d, d, 2, ["a", "b"], 8, 2, "x", "0", 0, 0, "t")])
        )
    rng = np.random.default_rng(0)
    rows = []
    for n in range(300):
        r = result(DATASETS[int(rng.integers(4))], POOL[int(rng.integers(len(POOL)))], float(rng.uniform()), n)
        r = dataclasses.replace(
            r, created_at=f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}", latency_ms=float(rng.uniform(1, 9))
        )
        store.write_table(result_key(r), to_table([r]), create_only=True)
        rows.append(r)
        if n % 64 == 63:
            write_snapshot(store, rows, summarize_rows(rows, profiles))

    def expected():
        state = read_state(store)
        ids = [d.dataset_id for d in state.datasets]
        n = len(state.results)
        history = hv_history(state.results, profiles, ids)
        return dataset_hypervolumes(state.results, profiles, ids), [round(history[i], 5) for i in history_marks(n)]

    def check():
        fast, slow = zoo_status(store), zoo_status(store, read_state(store))
        assert fast == slow
        per_dataset, history = expected()
        assert [p.mean_hypervolume for p in fast.hypervolume_history] == history
        assert {d.dataset_id: d.hypervolume for d in fast.per_dataset} == {
            d: round(v, 5) for d, v in per_dataset.items()
        }
        return fast

    status = check()  # 256 rows from the summaries, 44 from their files
    assert status.finished_jobs == 300 and status.datasets == 3 and status.per_dataset[0].pareto_front > 0
    write_snapshot(store, rows, summarize_rows(rows, profiles))
    with monkeypatch.context() as m:
        import tans.pipeline.commands.status as status_module

        def recomputed(points):
            raise AssertionError("a dataset's hypervolumes were recomputed although the summaries hold")

        m.setattr(status_module, "hypervolume_after", recomputed)
        assert zoo_status(store) == status  # every row in the snapshot: no dataset recomputed
    store.delete(result_key(rows[10]))  # set aside: its dataset is recomputed
    check()
    late = dataclasses.replace(result("d1", POOL[0], 0.99, 999), created_at="2025-01-01T00:00:00")
    store.write_table(result_key(late), to_table([late]))  # committed out of order
    rows = [r for r in rows if r is not rows[10]] + [late]
    write_snapshot(store, rows, summarize_rows(rows, profiles))
    check()


def test_a_result_set_aside_and_committed_again_is_read_as_committed(tmp_path):
    """Job ids are deterministic: a result quarantined and trained again lands under the same
    key. Its new row, not the snapshot's old one, is read, before and after the next refresh."""
    from tans.zoo_schema.results import quarantine

    store = open_store(str(tmp_path / "zoo"))
    rows = commit(store, 0, 70)
    write_snapshot(store, rows)
    quarantine(store, result_key(rows[3]), "damaged checkpoint")
    assert rows[3] not in read_results(store)
    again = dataclasses.replace(rows[3], accuracy=0.99, created_at="2027-01-01T00:00:00")
    store.write_table(result_key(again), to_table([again]), create_only=True)
    rows[3] = again
    expected = sorted(rows, key=lambda r: (r.dataset_id, r.job_id))
    assert read_results(store) == expected and results_table(store).equals(to_table(expected))
    write_snapshot(store, rows)
    assert scan_results(store).outside_snapshot == 0 and read_results(store) == expected
    for _ in range(3):  # merges keep the new row only
        rows += commit(store, len(rows) + 1000, len(rows) + 1064)
        write_snapshot(store, rows)
    assert [r.accuracy for r in read_results(store) if r.job_id == again.job_id] == [0.99]


def test_result_files_of_an_older_schema_are_read_with_defaults(tmp_path):
    """Rows written before the per-phase seconds existed read as 0 there, in every read path."""
    from tans.pipeline.commands.status import zoo_status
    from tans.retriever.stale import staleness
    from tans.zoo_schema.results import result_columns

    store = open_store(str(tmp_path / "zoo"))
    rows = commit(store, 0, 4)
    old = dataclasses.replace(result("d0", "arch", 0.5, 99), functional_embedding=[1.0, 2.0])
    store.write_table(result_key(old), to_table([old]).drop_columns(["data_seconds", "setup_seconds"]))
    assert len(read_results(store)) == 5 and results_table(store).num_rows == 5
    assert results_table(store, embeddings=False).num_rows == 5
    assert result_columns(store, ["data_seconds"])["data_seconds"].null_count in (0, 1)
    assert zoo_status(store).finished_jobs == 5 and staleness(store).results == 5
    write_snapshot(store, rows)
    assert zoo_status(store).finished_jobs == 5


def test_a_tampered_index_is_not_followed(tmp_path, caplog):
    store = open_store(str(tmp_path / "zoo"))
    write_snapshot(store, commit(store, 0, 10))
    store.write_json(layout.SNAPSHOT_INDEX, {"segments": [{"token": "../../../etc/passwd", "rows": 1}]})
    assert read_segments(store) is None and len(read_results(store)) == 10
    assert "unreadable" in caplog.text


def test_the_search_reads_only_its_hits_records_and_says_which_is_damaged(tmp_path):
    from tans.zoo_schema.errors import TansError
    from tans.zoo_schema.results import CommittedResults

    store = open_store(str(tmp_path / "zoo"))
    rows = commit(store, 0, 5)
    store.write_bytes(f"{layout.RESULTS}/stray.parquet", b"not a result's key")  # left out
    store.write_bytes(f"{layout.RESULTS}/dataset=d/deeper/x.parquet", b"nor this")
    store.write_bytes(f"{layout.RESULTS}/dataset=zzz/{rows[0].job_id}.parquet", b"junk")  # its id, planted
    (tmp_path / "zoo" / layout.RESULTS / "dataset=Odd \x1b[31m").mkdir()  # a name tans never writes
    (tmp_path / "zoo" / layout.RESULTS / "dataset=Odd \x1b[31m" / "x.parquet").write_bytes(b"x")
    results = CommittedResults.listed(store)
    assert rows[0].job_id in results and "nope" not in results and len(results) == 5
    assert results.keys[rows[0].job_id] == result_key(rows[0])  # the file that holds its row
    assert results.dataset_counts() == {"d0": 3, "d1": 2}
    assert results[rows[1].job_id] == rows[1]
    store.write_bytes(result_key(rows[2]), store.read_bytes(result_key(rows[1])))  # another job's row
    with pytest.raises(TansError, match="holds the row of job"):
        results[rows[2].job_id]
    store.write_bytes(result_key(rows[3]), b"not parquet")
    with pytest.raises(TansError, match="tans verify"):
        results[rows[3].job_id]
