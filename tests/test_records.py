from __future__ import annotations

import io

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tans.zoo_schema.records import SCHEMA_VERSION, ResultRecord, arrow_schema, from_table, to_table

PUBLIC = [
    "job_id",
    "dataset_id",
    "arch",
    "topology",
    "accuracy",
    "params",
    "flops",
    "latency_ms",
    "functional_embedding",
    "checkpoint_uri",
    "checkpoint_sha256",
    "created_at",
]


def record(**kw):
    base = dict(
        job_id="j1",
        dataset_id="d1",
        arch="a",
        topology=[3] * 45,
        accuracy=0.5,
        params=10,
        flops=20,
        latency_ms=1.5,
        latency_device="cpu",
        functional_embedding=[0.25] * 4,
        checkpoint_uri="/z/c",
        checkpoint_sha256="00",
        num_classes=2,
        epochs=1,
        image_size=32,
        train_seconds=1.0,
        epoch_losses=[1.0],
        epoch_accuracies=[0.5],
        base_weights="random-seed0",
        created_at="2026-01-01T00:00:00",
    )
    base.update(kw)
    return ResultRecord(**base)


def test_schema_has_public_columns_types_and_version(tmp_path):
    schema = arrow_schema(ResultRecord)
    assert set(PUBLIC) <= set(schema.names)
    assert schema.field("topology").type == pa.list_(pa.int32())
    assert schema.field("functional_embedding").type == pa.list_(pa.float32())
    assert schema.metadata[b"tans.schema_version"] == str(SCHEMA_VERSION).encode()
    path = tmp_path / "r.parquet"
    pq.write_table(to_table([record(), record(job_id="j2", accuracy=0.9)]), path)
    assert pq.read_schema(path).metadata[b"tans.schema_version"] == str(SCHEMA_VERSION).encode()
    # readable without tans: DuckDB sees the public columns
    rows = duckdb.sql(f"select job_id, accuracy, len(topology) from '{path}' order by job_id").fetchall()
    assert rows == [("j1", 0.5, 45), ("j2", 0.9, 45)]


def test_round_trip():
    recs = [record(), record(job_id="j2")]
    sink = io.BytesIO()
    pq.write_table(to_table(recs), sink)
    assert from_table(ResultRecord, pq.read_table(io.BytesIO(sink.getvalue()))) == recs


def test_records_from_a_table_are_what_their_constructor_makes():
    """from_table sets each record's fields at once instead of calling its __init__: the
    records are equal, and frozen alike, a column added later takes its default,
    columns it does not know are ignored, and empty lists are each their own."""
    import dataclasses

    import pytest

    recs = [record(), record(job_id="j2", accuracy=0.9, epoch_losses=[], data_seconds=1.5)]
    table = to_table(recs).drop_columns(["data_seconds"]).append_column("extra", pa.array([1, 2]))
    got = from_table(ResultRecord, table)
    assert got == [dataclasses.replace(r, data_seconds=0.0) for r in recs]
    assert [type(r) for r in got] == [ResultRecord] * 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        got[0].accuracy = 1.0
    assert got[1].epoch_losses == [] and got[1].epoch_losses is not from_table(ResultRecord, table)[1].epoch_losses
    with pytest.raises(ValueError, match="lacks columns"):
        from_table(ResultRecord, table.drop_columns(["accuracy"]))
    assert from_table(ResultRecord, table.slice(0, 0)) == []


def test_job_ids_of_jobs_evaluated_every_epoch_are_those_before_the_setting_existed():
    """`train.evaluate_every_epoch` (default true) does not enter the ids of existing zoos'
    jobs, so their resumes find their results; evaluating only the last epoch is another job.
    The pinned id was computed by workers/job.py before the setting existed."""
    from tans.workers.job import JobSpec, TrainSettings
    from tans.zoo_schema.manifest import BaseWeights

    base = BaseWeights(kind="random", id="random-seed-0", seed=0)

    def spec(train):
        return JobSpec(
            "shapes-clean", "ab" * 32, 8, "d22222-k3333333333-e3333333333", train, 1.0, base, 0, (8, 3, 32, 32)
        )

    assert spec(TrainSettings()).job_id == "79ecae63f82fe812f8bf3cdb"
    assert spec(TrainSettings(evaluate_every_epoch=False)).job_id not in ("79ecae63f82fe812f8bf3cdb", "")
