"""`tans export`: a zoo network for use without tans."""

from __future__ import annotations

import dataclasses

from tans.pipeline.cli.options import EXIT_OK, emit, open_existing, parent


def add(sub) -> None:
    x = sub.add_parser(
        "export",
        parents=[parent("zoo", "json", json_help="print the files and the config as JSON")],
        help="write a zoo network for use without tans: model.safetensors, config.json, "
        "README.md (model card) and model.pt2 (torch.export)",
    )
    x.add_argument(
        "--job", required=True, metavar="JOB_ID", help="job_id of the network (from `tans search` or `tans status`)"
    )
    x.add_argument("--out", required=True, metavar="DIR", help="directory to write the files into")
    x.set_defaults(func=run)


def run(args) -> int:
    from tans.workers.networks.export import export_network

    report = export_network(open_existing(args), args.job, args.out)
    c = report.config
    emit(
        args,
        dataclasses.asdict(report),
        f"wrote {', '.join(report.files)} to {report.folder}: {c.architecture} ({c.num_classes} classes of "
        f"{c.dataset_id}, accuracy {c.accuracy:.3f}); load with torch alone: torch.export.load('model.pt2').module()",
    )
    return EXIT_OK
