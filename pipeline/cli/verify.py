"""`tans verify`: check every file of a zoo, set damaged ones aside, list orphans."""

from __future__ import annotations

from tans.pipeline.cli.options import EXIT_FAILED, EXIT_OK, emit, open_existing, parent, quiet_unless_text

SHOWN = 50  # orphans listed as text (--json lists all)


def add(sub) -> None:
    v = sub.add_parser(
        "verify",
        parents=[parent("zoo", "json", "wait", json_help="print the report as JSON")],
        help="check every result, checkpoint and dataset; quarantine corrupt ones",
    )
    v.add_argument(
        "--clean-orphans",
        action="store_true",
        help="delete the listed orphans (objects nothing references) and temp files older than 10 min",
    )
    v.add_argument("--dry-run", action="store_true", help="only report: quarantine and delete nothing (takes no lease)")
    v.set_defaults(func=run)


def run(args) -> int:
    from tans.pipeline.commands.verify import verify_zoo

    report = verify_zoo(
        open_existing(args), args.clean_orphans, dry_run=args.dry_run, wait=args.wait, log=quiet_unless_text(args)
    )
    emit(args, report.as_dict(), text(report))
    return EXIT_FAILED if report.problems else EXIT_OK


def text(report) -> str:
    from tans.pipeline.commands.verify import WRITER_TIME_LIMIT_S

    lines = [
        f"zoo {report.zoo}: {report.results_checked} results, {report.datasets_checked} datasets and "
        f"{report.retriever_versions_checked} retriever versions checked, {len(report.problems)} problem(s), "
        f"{len(report.orphans)} orphan(s), {len(report.temp_files)} temp file(s)"
    ]
    if report.legacy_checkpoint_refs:
        lines.append(
            f"  {report.legacy_checkpoint_refs} result row(s) of schema 1 name their checkpoint by absolute "
            "URI; they are read as keys of this zoo (nothing to do)"
        )
    action = "quarantined" if report.quarantined else "would be quarantined (--dry-run)"
    lines += [f"  {p.key}: {p.problem} ({action}); repair: {p.repair}" for p in report.problems]
    verb = "deleted" if report.orphans_deleted else "would be deleted by --clean-orphans"
    young = set(report.young)
    kept = (
        f"was written less than {WRITER_TIME_LIMIT_S / 60:.0f} min ago, and a writer that lost its lease may "
        "still commit it; run --clean-orphans again later"
    )
    lines += [f"  orphan kept: {k} {kept}" if k in young else f"  orphan ({verb}): {k}" for k in report.orphans[:SHOWN]]
    if len(report.orphans) > SHOWN:
        lines.append(f"  ... and {len(report.orphans) - SHOWN} more orphans (--json lists all)")
    lines += [f"  not a file tans writes, left alone: {k}" for k in report.foreign]
    lines += [f"  reached through a symlink out of the zoo, left alone: {k}" for k in report.outside]
    lines += [f"  temp file of an interrupted write: {k}" for k in report.temp_files]
    return "\n".join(lines)
