"""Write the sample output of ``python -m sj_parallel doctor`` into the docs.

Run on a machine without a GPU (the sample shows that case), from the repository
root::

    python scripts/doctor_sample.py          # rewrite the block in docs/cupy_backend.md
    python scripts/doctor_sample.py --check  # exit status 1 if the block is stale

The block sits between ``<!-- doctor-sample: begin -->`` and
``<!-- doctor-sample: end -->``. ``tests/test_doctor.py`` compares it with a fresh
report after :func:`normalize` (which drops paths, version numbers and times, the
parts that differ between machines).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "cupy_backend.md")
BEGIN, END = "<!-- doctor-sample: begin -->", "<!-- doctor-sample: end -->"
_VERSION_KEYS = (
    "python", "torch", "spikingjelly", "cupy", "cupy wheels", "nvrtc",
    "cuda headers", "numpy",
)  # fmt: skip


def sample() -> str:
    """The report of ``python -m sj_parallel doctor`` on this machine, as a user runs
    it (a fresh process, without the test suite's ``TRITON_INTERPRET=1``), with the
    directories before ``site-packages`` shortened to ``...``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    proc = subprocess.run(
        [sys.executable, "-m", "sj_parallel", "doctor"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the doctor failed:\n{proc.stdout}\n{proc.stderr}")
    text = proc.stdout.rstrip("\n")
    return re.sub(r"/\S*/site-packages/", ".../site-packages/", text) + "\n"


def normalize(text: str) -> str:
    """``text`` without what differs between machines: the versions section's values
    (and its header directories), numbers with decimals (versions, seconds) and
    paths."""
    out = []
    for line in text.strip().splitlines():
        line = line.rstrip()
        m = re.match(r"  (" + "|".join(_VERSION_KEYS) + r")\b", line)
        if m:
            line = "  " + m.group(1)
        elif re.match(r" {16}\S", line):  # a header directory's continuation line
            continue
        line = re.sub(r"(\.\.\.)?/\S+", "<path>", line)
        line = re.sub(r"\d+(\.\d+)+", "<n>", line)
        out.append(line)
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only compare")
    a = p.parse_args(argv)
    text = open(DOC).read()
    head, rest = text.split(BEGIN)
    old, tail = rest.split(END)
    new = f"{BEGIN}\n\n```text\n{sample()}```\n\n{END}"
    if a.check:
        current = old.split("```text\n")[1].split("```")[0]
        stale = normalize(current) != normalize(sample())
        print("stale" if stale else "up to date")
        return int(stale)
    with open(DOC, "w") as f:
        f.write(head + new + tail)
    print(f"wrote the sample into {os.path.relpath(DOC, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
