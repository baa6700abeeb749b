"""Command line: ``python -m sj_parallel doctor [--backend NAME] [--json]``.

Exit status: 0 after a report, 1 when ``--backend`` names a backend that cannot run
here, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sj_parallel",
        description="sj_parallel command-line tools.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "doctor",
        help="report versions, GPUs, which backends can run (and why not), compile "
        "the CUDA and Triton kernels, and on a GPU check backends 'cupy' and 'triton' "
        "against 'torch'",
        description="Report versions, GPUs and which backends can run here, with "
        "the reason and a fix for every problem; compile every CUDA kernel with "
        "NVRTC and one Triton kernel per family (for the GPUs present, or the --arch "
        "given), and on a GPU run each op with backends 'cupy' and 'triton' against "
        "backend 'torch'. Exit status: 0, or 1 when "
        "--backend names a backend that cannot run.",
    )
    from .backends import BACKENDS

    d.add_argument(
        "--backend",
        choices=BACKENDS,
        help="the backend you intend to use: exit status 1 when it cannot run",
    )
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    d.add_argument(
        "--arch",
        metavar="CC",
        help="compile for this compute capability, e.g. 70, 80 or 90 (default: "
        "the GPUs present; without a GPU nothing is compiled unless this is given)",
    )
    d.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the NVRTC and Triton compile steps",
    )
    d.add_argument(
        "--no-run", action="store_true", help="skip running the ops on the GPU"
    )
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``).

    :return: the exit status
    :rtype: int
    """
    parser = _parser()
    args = parser.parse_args(argv)  # exits with status 2 on bad arguments
    if args.command != "doctor":
        parser.print_help(sys.stderr)
        return 2
    if args.arch is not None and not (args.arch.isdigit() and len(args.arch) >= 2):
        parser.error(
            f"--arch must look like 80 (compute capability 8.0), got {args.arch!r}"
        )
    from .doctor import doctor, format_report, process_seconds

    report = doctor(
        backend=args.backend,
        nvrtc_compile=not args.no_compile,
        run_ops=not args.no_run,
        arch=args.arch,
    )
    report["process_seconds"] = process_seconds()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    if args.backend is not None and not report["backends"][args.backend]["ok"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
