"""``python -m eval.prepare NAME ROOT OUT``: write a benchmark's manifest from its official download."""
from __future__ import annotations

import json
import logging
import sys

from aum.cli import CommandLine, run_cli
from eval.prepare import PREPARERS, prepare


def main(argv=None) -> int:
    """Command-line entry point (``aum-prepare``); returns the exit status: 0 done, 2 a usage error or a
    :class:`eval.prepare.PrepareError` (one message, :func:`aum.cli.run_cli`)."""
    return run_cli("aum-prepare", _main, argv)


def _main(argv: list[str]) -> int:
    ap = CommandLine("python -m eval.prepare", __doc__,
                     epilog="Each dataset's expected layout: see the docstring of eval/prepare/<NAME>.py")
    ap.add_argument("name", choices=sorted(PREPARERS), help="benchmark / dataset")
    ap.add_argument("root", help="the official download, unpacked")
    ap.add_argument("out", help="folder for manifest.jsonl, classes.txt, prepare_report.json")
    ap.add_argument("--audio", help="clip folder (or the EPIC HDF5 file) when not inside ROOT")
    ap.add_argument("--strict", action="store_true", help="vggsound: a missing clip is an error")
    ap.add_argument("--full-videos", action="store_true",
                    help="audioset: files hold whole videos; cut the listed segment")
    args = ap.parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = {"audio": args.audio} if args.audio else {}
    if args.strict:
        if args.name != "vggsound":
            ap.error("--strict applies to vggsound only")
        options["strict"] = True
    if args.full_videos:
        if not args.name.startswith("audioset"):
            ap.error("--full-videos applies to audioset / audioset20k only")
        options["full_videos"] = True
    prepared = prepare(args.name, args.root, args.out, **options)
    print(json.dumps({"dataset": args.name, "clips": len(prepared.entries), "classes": len(prepared.classes),
                      **prepared.report}, indent=2))
    print(f"wrote {args.out}/manifest.jsonl, classes.txt, prepare_report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
