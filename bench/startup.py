"""Start-up time of the ``g3`` command: how long before anything happens.

Every figure is the median wall time of ``--repeats`` fresh Python processes (the interpreter start
included), measured in this order, one source tree after another within each repetition:

* ``g3 --help`` and ``g3 version``;
* ``import g3.agent`` (the Python API's import);
* ``g3 locate -c configs/tiny.yaml`` of a missing photo, and of a text file named ``.jpg``, until it exits
  with its error (both must fail);
* the tiny setting's first answer: ``g3 locate -c configs/tiny.yaml PHOTO`` until it prints the answer and
  until the process ends (Python's teardown after torch and transformers adds 1–1.5 s), **cold** (an empty
  ``$G3_CACHE_DIR``: the tiny models and index are built first) and **warm** (built);
* in one process (warm cache): ``import g3.agent``, ``G3.from_config``, the first and the second answer.

``--src DIR`` (repeatable, ``NAME=DIR`` to label it) measures the ``g3`` package of another checkout side
by side with this one (e.g. a ``git worktree`` of an older commit): its processes run with
``PYTHONPATH=DIR`` and the same Python, and the script checks that ``g3`` is imported from there.

    python bench/startup.py [--repeats 3] [--cold-repeats 2] [--src before=/tmp/g3-before --src after=.]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "im2gps3k" / "images_cc_subset500"

#: Runs the CLI of whichever ``g3`` is first on the path (the console script would import the installed one).
CLI = "import sys; sys.argv[0] = 'g3'; from g3.cli import main; main()"
#: The in-process phases of the first and the second answer, printed as JSON.
IN_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
from g3.agent import G3
t1 = time.perf_counter()
g3 = G3.from_config(sys.argv[1])
t2 = time.perf_counter()
g3.locate(sys.argv[2])
t3 = time.perf_counter()
g3.locate(sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "from_config": t2 - t1, "first": t3 - t2, "second": t4 - t3}))
"""


@dataclass
class Source:
    """One checkout whose ``g3`` is measured."""

    name: str
    root: Path
    cache: Path  # the warm $G3_CACHE_DIR of this checkout
    times: dict[str, list[float]] = field(default_factory=dict)

    def env(self, cache: Path | None = None) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(self.root), G3_CACHE_DIR=str(cache or self.cache))
        env.pop("PYTHONSTARTUP", None)
        return env

    def add(self, label: str, seconds: float) -> None:
        self.times.setdefault(label, []).append(seconds)


def run(source: Source, args: list[str], *, ok: bool, cache: Path | None = None) -> tuple[float, str]:
    """Wall time of ``python ARGS`` in a fresh process; fails unless it exits 0 (``ok``) or non-zero."""
    _, seconds, out = run_until(source, args, None, ok=ok, cache=cache)
    return seconds, out


def run_until(
    source: Source, args: list[str], marker: str | None, *, ok: bool, cache: Path | None = None
) -> tuple[float, float, str]:
    """Seconds until a line of stdout holds ``marker`` (None: the end), seconds until the process ended, stdout."""
    start = time.perf_counter()
    seen, lines = None, []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=source.root, env=source.env(cache),
                                stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if seen is None and marker is not None and marker in line:
                seen = time.perf_counter() - start
            lines.append(line)
        returncode = proc.wait()
        ended = time.perf_counter() - start
        err.seek(0)
        errors = err.read()
    out = "".join(lines)
    if (returncode == 0) != ok or (marker is not None and seen is None):
        raise SystemExit(
            f"[{source.name}] python {' '.join(args)} exited {returncode}, expected {'0' if ok else 'an error'}"
            f"{f' after a line with {marker!r}' if marker else ''}:\n{out[-2000:]}\n{errors[-2000:]}"
        )
    return (ended if seen is None else seen), ended, out


def check_source(source: Source) -> None:
    """Fail unless ``g3`` is imported from ``source.root`` with its environment."""
    _, out = run(source, ["-c", "import g3; print(g3.__file__)"], ok=True)
    where = Path(out.strip()).resolve()
    if source.root.resolve() not in where.parents:
        raise SystemExit(f"[{source.name}] g3 is imported from {where}, not from {source.root}")


def measure_once(source: Source, config: Path, photo: Path, not_a_photo: Path, cold: bool, scratch: Path) -> None:
    """One repetition of every figure for one source."""
    cli = ["-c", CLI]
    source.add("g3 --help", run(source, [*cli, "--help"], ok=True)[0])
    source.add("g3 version", run(source, [*cli, "version"], ok=True)[0])
    source.add("import g3.agent", run(source, ["-c", "import g3.agent"], ok=True)[0])
    missing = scratch / "no-such-photo.jpg"
    source.add("reject a missing photo", run(source, [*cli, "locate", "-c", str(config), str(missing)], ok=False)[0])
    source.add(
        "reject a non-image photo", run(source, [*cli, "locate", "-c", str(config), str(not_a_photo)], ok=False)[0]
    )
    locate = [*cli, "locate", "-c", str(config), str(photo)]
    answer = f"{photo}: "  # the answer's line starts with the photo's path
    if cold:
        with tempfile.TemporaryDirectory(dir=scratch) as empty:
            printed, ended, _ = run_until(source, locate, answer, ok=True, cache=Path(empty))
        source.add("first answer, cold (builds the tiny assets): printed", printed)
        source.add("first answer, cold: process ended", ended)
    printed, ended, _ = run_until(source, locate, answer, ok=True)
    source.add("first answer, warm: printed", printed)
    source.add("first answer, warm: process ended", ended)
    _, out = run(source, ["-c", IN_PROCESS, str(config), str(photo)], ok=True)
    phases = json.loads(out.strip().splitlines()[-1])
    source.add("in process: from g3.agent import G3", phases["import"])
    source.add("in process: G3.from_config", phases["from_config"])
    source.add("in process: first answer", phases["first"])
    source.add("in process: second answer", phases["second"])


def table(sources: list[Source]) -> str:
    """The medians as a Markdown table, one column per source."""
    labels = list(sources[0].times)
    head = "| seconds (median) | " + " | ".join(s.name for s in sources) + " |"
    rule = "|---|" + "---:|" * len(sources)
    rows = [
        f"| {label} | " + " | ".join(f"{statistics.median(s.times[label]):.2f}" for s in sources) + " |"
        for label in labels
    ]
    return "\n".join([head, rule, *rows])


def parse_source(value: str, scratch: Path) -> Source:
    name, _, path = value.rpartition("=")
    root = Path(path).resolve()
    if not (root / "g3" / "__init__.py").is_file():
        raise SystemExit(f"--src {value}: {root} holds no g3 package")
    cache = scratch / f"cache-{len(list(scratch.glob('cache-*')))}"
    cache.mkdir()
    return Source(name or root.name, root, cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--src", action="append", help="[NAME=]DIR of a g3 checkout (repeatable; default: this one)")
    parser.add_argument("--config", default="configs/tiny.yaml", help="config, relative to each checkout")
    parser.add_argument("--photo", type=Path, default=None, help="a real photo (default: the first IM2GPS3k one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold-repeats", type=int, default=1, help="repetitions that also time a cold start")
    parser.add_argument("--json", type=Path, default=None, help="also write every time measured here")
    args = parser.parse_args()
    photo = args.photo or min(PHOTOS.glob("*.jpg"), default=None)
    if photo is None or not photo.is_file():
        raise SystemExit(f"no photo: pass --photo (none found in {PHOTOS})")

    with tempfile.TemporaryDirectory(prefix="g3-startup-") as tmp:
        scratch = Path(tmp)
        sources = [parse_source(v, scratch) for v in args.src or [f"this checkout={ROOT}"]]
        not_a_photo = scratch / "notes.jpg"
        not_a_photo.write_text("this is a text file, not a photo\n", encoding="utf-8")
        for source in sources:
            check_source(source)
            # builds the warm cache (not timed)
            run(source, ["-c", CLI, "locate", "-c", args.config, str(photo)], ok=True)
        for repeat in range(args.repeats):
            for source in sources:
                measure_once(
                    source, Path(args.config), photo, not_a_photo, cold=repeat < args.cold_repeats, scratch=scratch
                )
            print(f"repetition {repeat + 1} of {args.repeats} done", file=sys.stderr)

    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, photo {photo.name}, config {args.config}")
    print(table(sources))
    if args.json:
        args.json.write_text(json.dumps({s.name: s.times for s in sources}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
