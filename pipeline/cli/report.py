"""`tans report`: an HTML page with plots of the zoo."""

from __future__ import annotations

from tans.pipeline.cli.options import EXIT_OK, emit, open_existing, parent


def add(sub) -> None:
    rp = sub.add_parser(
        "report",
        parents=[parent("zoo", "json", json_help="print the files written as JSON")],
        help="write an HTML report with plots of the zoo",
    )
    rp.add_argument("--out", required=True, metavar="DIR", help="directory for index.html and its figures")
    rp.set_defaults(func=run)


def run(args) -> int:
    from tans.pipeline.commands.report import write_report

    page = write_report(open_existing(args), args.out, log=(lambda *_: None) if args.json else print)
    emit(args, {"report": str(page)}, indent=None)
    return EXIT_OK
