"""`tans compact`: move the committed results out of their per-job files into one sealed
segment (see `tans.zoo_schema.sealed`), so that listing and reading a zoo of a million
results is a few large objects, not a million small ones.

One run, holding the zoo's lease (no build, ingestion, retraining or verify writes at the
same time):
1. list the per-job result files; those whose job is sealed already are duplicates (a
   compaction cut short after sealing, or a late second commit of the job: the sealed row
   was first and stays the commit);
2. read the others' rows from their files, in batches of whole datasets (SEAL_ROWS rows:
   memory stays bounded), with the status summaries of each row's dataset computed over
   all its results;
3. write each batch as one sealed segment; its create-only manifest is the commit;
4. only then delete that batch's files; at the end delete the duplicates and empty the
   snapshot's cache (its rows are sealed now);
5. merge small segments (fewer than MERGE_BELOW rows), neighbours in age, by the
   snapshot's size rule (`merge_groups`): a zoo compacted after every few hundred jobs
   keeps a few segments, not thousands (one request each on S3 for every reader), and a
   row is rewritten a few times, not by every compaction; a damaged segment is not merged
   (`tans verify`).

A crash before 3 changes nothing; between 3 and 4 leaves files whose rows are sealed, which
readers take as sealed and the next compaction deletes. A merge is written before the
segments it replaces are deleted; readers take the replacing segment only, so a crash in 5
leaves replaced segments, which readers skip and `tans verify` deletes. A file that cannot be read, or holds
another job's row, is left where it is for `tans verify` to set aside. Checkpoints are not
touched: they stay where each row names them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pyarrow as pa

from tans.pipeline.execution.lease import holding
from tans.zoo_schema import layout, sealed
from tans.zoo_schema.records import ResultRecord, from_table
from tans.zoo_schema.results import (
    SUMMARY,
    clear_snapshot,
    files_rows,
    light_rows,
    result_keys,
)
from tans.zoo_schema.store import ZooStore


@dataclass
class CompactReport:
    zoo: str
    sealed_rows: int = 0  # rows sealed by this run (one new segment)
    files_deleted: int = 0  # per-job files deleted: the rows sealed now, and duplicates
    duplicates: int = 0  # of which files of jobs that were sealed already
    unusable: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): left for `tans verify`
    segments_merged: int = 0  # small live segments merged (into `merged_into` new ones)
    merged_into: int = 0
    segments: int = 0  # live sealed segments after the run
    sealed_total: int = 0  # jobs in them (a job sealed twice, once)
    dry_run: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def compact_zoo(store: ZooStore, dry_run: bool = False, wait: bool = False, log=print) -> CompactReport:
    """Seal the rows of the per-job result files and delete the files (see the module
    docstring). With `dry_run`, only counts, and takes no lease."""
    if dry_run:
        return _compact(store, CompactReport(zoo=store.uri, dry_run=True))
    with holding(store, "tans compact", wait=wait, log=log):
        return _compact(store, CompactReport(zoo=store.uri))


SEAL_ROWS = 250_000  # rows read and sealed at once (whole datasets): ~1.3 GB of embeddings
MERGE_BELOW = SEAL_ROWS // 4  # a live segment of fewer rows is merged with its small neighbours
MERGE_FLOOR = 2_000  # segments of fewer rows (~10 MB of embeddings) are merged as if they had this many


def _compact(store: ZooStore, report: CompactReport) -> CompactReport:
    index = sealed.sealed_index(store)
    jobs = index.ids()
    duplicates, fresh = [], []
    for key in result_keys(store):
        if (parts := layout.result_key_parts(key)) is None:
            report.unusable.append((key, "not the name of a result file"))
        else:
            (duplicates if parts[1] in jobs else fresh).append(key)
    report.duplicates = len(duplicates)
    for batch in _batches(fresh):
        table, unusable = files_rows(store, batch)
        report.unusable += unusable
        report.sealed_rows += table.num_rows
        if report.dry_run or not table.num_rows:
            continue
        sealed.write_sealed(store, _summarized(store, table, index))
        ids = zip(table["dataset_id"].to_pylist(), table["job_id"].to_pylist())
        for key in sorted({layout.result_key(d, j) for d, j in ids}):  # the files whose rows are sealed now
            store.delete(key)
            report.files_deleted += 1
    if not report.dry_run:
        for key in duplicates:
            store.delete(key)
            report.files_deleted += 1
        if report.sealed_rows:
            clear_snapshot(store)  # its rows are sealed now
    segments = sealed.live(sealed.manifests(store))  # oldest first
    if report.dry_run:  # the segments this run would seal are small when they have few rows: count them in
        batches = _batches([k for k in fresh if k not in {u for u, _ in report.unusable}])
        groups = merge_groups([s.rows for s in segments] + [len(b) for b in batches])
        report.segments_merged, report.merged_into = sum(len(g) for g in groups), len(groups)
        report.segments = len(segments) + len(batches) - report.segments_merged + report.merged_into
        report.sealed_total = len(jobs) + report.sealed_rows
        return report
    _merge(store, segments, report)
    report.segments = len(sealed.live(sealed.manifests(store)))
    report.sealed_total = len(jobs) + report.sealed_rows  # a merge keeps every job
    return report


def _merge(store: ZooStore, segments: list[sealed.Sealed], report: CompactReport) -> None:
    """Merge the small live segments (`merge_groups`). Each group's segments are checked
    against their sha256 first: a damaged one is left out, as a barrier between its
    neighbours, for `tans verify` (a merge would give its bad bytes a fresh sha256). Every
    merged segment is written before any replaced one is deleted, so a reader that listed
    before or during the merge finds at most one set gone and lists once more."""
    damaged: set[int] = set()
    while True:
        rows = [MERGE_BELOW if i in damaged else s.rows for i, s in enumerate(segments)]  # a barrier
        groups = merge_groups(rows)
        bad = {i for g in groups for i in g if i not in damaged and not sealed.intact(store, segments[i])}
        if not bad:
            break
        damaged |= bad
        report.unusable += [(segments[i].keys[0], "sealed segment damaged: not merged") for i in sorted(bad)]
    replaced = []
    for group in groups:
        parts = [segments[i] for i in group]
        table = pa.concat_tables([sealed.read_segment(store, p, light=False) for p in parts], promote_options="default")
        sealed.replace(store, parts, sealed.once(table), delete=False)  # a job sealed twice: its older row
        replaced += parts
        report.segments_merged += len(parts)
        report.merged_into += 1
    sealed.drop(store, replaced)


def merge_groups(rows: list[int]) -> list[list[int]]:
    """Which segments to merge, given their row counts oldest first. Within each run of
    adjacent segments of fewer than MERGE_BELOW rows, the newest two are merged while the
    newer is at least half the size of the older (the snapshot's rule), a segment of fewer
    than MERGE_FLOOR rows counting as MERGE_FLOOR: a new small segment is merged into one of
    up to 2 x MERGE_FLOOR rows (rewriting so few rows costs little, and a zoo of a few small
    builds stays one segment), and above that the run's sizes fall by more than half from
    oldest to newest. A zoo compacted after every k jobs then keeps at most about
    log2(MERGE_BELOW / MERGE_FLOOR) + 1 small segments, and a row is rewritten while its
    segment is that small, then only when it grows at least 1.5-fold: not at every
    compaction. Only groups of two or more are merged, none over SEAL_ROWS. Merging only
    neighbours in age keeps the order of the rows that remain."""
    groups: list[list[int]] = []
    run: list[tuple[list[int], int]] = []  # (segments, rows) of the run being packed, oldest first
    size = lambda n: max(n, MERGE_FLOOR)  # noqa: E731

    def close() -> None:
        groups.extend(g for g, _ in run if len(g) > 1)
        run.clear()

    for i, n in enumerate(rows):
        if n >= MERGE_BELOW:
            close()
            continue
        run.append(([i], n))
        while len(run) > 1 and size(run[-1][1]) * 2 >= size(run[-2][1]) and run[-1][1] + run[-2][1] <= SEAL_ROWS:
            (a, x), (b, y) = run[-2:]
            run[-2:] = [(a + b, x + y)]
        if run[-1][1] >= MERGE_BELOW:  # large now, and so is every older one of the run
            close()
    close()
    return groups


def _batches(keys: list[str]) -> list[list[str]]:
    """The keys in batches of whole datasets, each of at most SEAL_ROWS rows unless one
    dataset alone has more (so that a dataset's rows, and their status summaries, are sealed
    together)."""
    by_dataset: dict[str, list[str]] = {}
    for key in keys:
        parts = layout.result_key_parts(key)
        by_dataset.setdefault(parts[0] if parts else "", []).append(key)
    batches: list[list[str]] = []
    for group in by_dataset.values():
        if not batches or len(batches[-1]) + len(group) > SEAL_ROWS:
            batches.append([])
        batches[-1].extend(group)
    return [b for b in batches if b]


def _summarized(store: ZooStore, table, index: sealed.SealedIndex):
    """The rows with their status summaries (each row's rank in its dataset's commit order,
    the dataset's hypervolume and front size after it), computed over all the results of
    the datasets they belong to, sealed ones included: `tans status` then reads them instead
    of recomputing every front."""
    import pyarrow as pa

    from tans.pipeline.acquisition.hypervolume import summarize_rows
    from tans.pipeline.acquisition.priors import cached_profiles

    touched = set(table["dataset_id"].to_pylist())
    scalars = table.drop_columns([c for c in (*SUMMARY, "functional_embedding") if c in table.column_names])
    records = from_table(ResultRecord, light_rows(scalars))
    import pyarrow.compute as pc

    wanted = pa.array(sorted(touched), pa.string())
    if len(index) and pc.any(pc.is_in(index.dataset_ids, value_set=wanted)).as_py():
        held = sealed.sealed_table(store, light=True)
        if held is not None:
            held = held.filter(pc.is_in(held["dataset_id"], value_set=wanted))
            held = held.drop_columns([c for c in SUMMARY if c in held.column_names])
            records += from_table(ResultRecord, light_rows(held))
    new = records[: table.num_rows]
    columns = summarize_rows(records, cached_profiles(store))(new)
    table = table.drop_columns([c for c in SUMMARY if c in table.column_names])
    for name, kind in SUMMARY.items():
        table = table.append_column(pa.field(name, kind), pa.array(list(columns.get(name, [None] * len(new))), kind))
    return table
