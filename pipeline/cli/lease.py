"""`tans lease show` and `tans lease break`: which command writes to the zoo, and removing
a dead writer's lease."""

from __future__ import annotations

from tans.pipeline.cli.options import EXIT_OK, emit, parent


def add(sub) -> None:
    le = sub.add_parser("lease", help="show or break the zoo's lease (one writing command per zoo)")
    lsub = le.add_subparsers(dest="lease_command", required=True)
    ls = lsub.add_parser(
        "show", parents=[parent("zoo", "json")], help="who holds the lease, its age and TTL, and whether it is stale"
    )
    lb = lsub.add_parser(
        "break", parents=[parent("zoo")], help="remove a stale, dead or corrupt lease (a fresh one with --force)"
    )
    lb.add_argument("--force", action="store_true", help="remove a fresh lease too: only if its writer is dead")
    for cmd in (ls, lb):
        cmd.set_defaults(func=run)


def run(args) -> int:
    from tans.pipeline.execution.lease import break_lease, inspect, read_lease
    from tans.zoo_schema.layout import LEASE
    from tans.zoo_schema.manifest import require_zoo
    from tans.zoo_schema.store import S3Settings, open_store

    store = open_store(args.zoo, S3Settings(endpoint_url=args.s3_endpoint))
    if not store.exists(LEASE):
        require_zoo(store)  # a mistyped path is an error, not "no lease"
    if args.lease_command == "break":
        print(break_lease(store, args.force))
        return EXIT_OK
    lease = read_lease(store)
    info = {"zoo": store.uri, **(inspect(lease) if lease else {"holder": None})}
    if lease is None:
        text = f"zoo {store.uri}: no lease; no command is writing to it"
    else:
        state = {True: "stale", False: "fresh", None: "stale only if unchanged for a TTL"}[info["stale"]]
        text = (
            f"zoo {store.uri}: leased by {info['holder']} running `{info['command']}` ({info['why']}), "
            f"ttl {info['ttl_s']:g}s: {state}"
        )
    emit(args, info, text)
    return EXIT_OK
