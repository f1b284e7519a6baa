"""`tans status`: what a zoo holds."""

from __future__ import annotations

from tans.pipeline.cli.options import EXIT_OK, emit, open_existing, parent


def add(sub) -> None:
    s = sub.add_parser("status", parents=[parent("zoo", "json")], help="show what a zoo holds")
    s.set_defaults(func=run)


def run(args) -> int:
    from tans.pipeline.commands.status import format_status, zoo_status

    status = zoo_status(open_existing(args))
    emit(args, status.as_dict(), None if args.json else format_status(status))
    return EXIT_OK
