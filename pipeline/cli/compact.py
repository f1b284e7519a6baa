"""`tans compact`: seal the committed results into one large segment, delete their per-job files."""

from __future__ import annotations

from tans.pipeline.cli.options import EXIT_OK, emit, open_existing, parent, quiet_unless_text

SHOWN = 20  # unusable files listed as text (--json lists all)


def add(sub) -> None:
    c = sub.add_parser(
        "compact",
        parents=[parent("zoo", "json", "wait", json_help="print the report as JSON")],
        help="move the results out of their per-job files into sealed segments and merge small segments "
        "(a zoo of millions reads fast)",
    )
    c.add_argument("--dry-run", action="store_true", help="only count what would be sealed (takes no lease)")
    c.set_defaults(func=run)


def run(args) -> int:
    from tans.pipeline.commands.compact import compact_zoo

    report = compact_zoo(open_existing(args), dry_run=args.dry_run, wait=args.wait, log=quiet_unless_text(args))
    emit(args, report.as_dict(), text(report))
    return EXIT_OK


def text(report) -> str:
    verb = "would seal (--dry-run)" if report.dry_run else "sealed"
    lines = [
        f"zoo {report.zoo}: {verb} {report.sealed_rows} result(s) into "
        f"{'a new segment' if report.sealed_rows else 'no new segment'}; "
        f"{report.files_deleted} per-job file(s) deleted"
        + (f" ({report.duplicates} of jobs sealed before)" if report.duplicates else "")
        + (
            f"; {'would merge' if report.dry_run else 'merged'} {report.segments_merged} small segment(s) "
            f"into {report.merged_into}"
            if report.segments_merged
            else ""
        )
        + f"; {report.sealed_total} results in {report.segments} sealed segment(s)"
    ]
    lines += [f"  left in place, `tans verify` sets it aside: {k}: {why}" for k, why in report.unusable[:SHOWN]]
    if len(report.unusable) > SHOWN:
        lines.append(f"  ... and {len(report.unusable) - SHOWN} more (--json lists all)")
    return "\n".join(lines)
