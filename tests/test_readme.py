"""The docs agree with the code: every path a configuration names exists or is written by a documented
command, and the README's quickstart runs as written (tiny setting, offline)."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from g3.agent.config import PATH_SETTINGS, G3Config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS_WITH_COMMANDS = (
    README,
    ROOT / "eval" / "README.md",
    ROOT / "indices" / "README.md",
    ROOT / "docker" / "README.md",
)
#: G3 configurations (train_*.yaml configure `g3 train` and name no files)
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("train_"))
BIN = Path(sys.executable).parent


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[str]:
    """The commands of a shell block: comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def written_paths() -> set[Path]:
    """Paths the documented commands write: ``--out PATH`` and ``g3 aligner convert SRC PATH``."""
    found: set[Path] = set()
    for doc in DOCS_WITH_COMMANDS:
        for block in code_blocks(doc.read_text(encoding="utf-8")):
            for command in commands(block):
                words = command.split()
                found |= {ROOT / words[i + 1] for i, w in enumerate(words[:-1]) if w == "--out"}
                if words[:3] == ["g3", "aligner", "convert"] and len(words) > 4:
                    found.add(ROOT / words[4])
    return found


def setting(config: G3Config, dotted: str) -> object:
    node: object = config
    for key in dotted.split("."):
        node = getattr(node, key)
    return node


def test_the_scanner_sees_the_documented_commands() -> None:
    written = written_paths()
    assert {ROOT / "checkpoints/g3", ROOT / "indices/mp16"} <= written


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_every_path_a_configuration_names_exists_or_is_written_by_a_documented_command(path: Path) -> None:
    config = G3Config.load(path)
    written = written_paths()
    for dotted in PATH_SETTINGS:
        value = setting(config, dotted)
        if not isinstance(value, str) or not Path(value).is_absolute():
            continue  # unset, a hub id, a name (geoclip) or a tiny:// URI
        target = Path(value)
        assert target.exists() or target in written, (
            f"{path.relative_to(ROOT)}: {dotted} = {target} neither exists nor is written by a command of "
            f"{', '.join(str(d.relative_to(ROOT)) for d in DOCS_WITH_COMMANDS)}"
        )


def quickstart_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quickstart") :]
    return code_blocks(section[: section.index("\n## ", 1)])[0]


def quickstart() -> list[str]:
    return commands(quickstart_block())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tiny_assets: Path, tmp_path: Path) -> None:
    steps = quickstart()
    assert steps[0] == "bash scripts/install.sh" and (ROOT / "scripts" / "install.sh").is_file()  # CI ran it
    assert len(steps) == 4 and all(s.startswith(".venv/bin/") for s in steps[1:])
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the commands run from the repository root's layout
    env = os.environ | {"G3_CACHE_DIR": str(tiny_assets.parent), "HF_HUB_OFFLINE": "1"}

    def argv(command: str) -> list[str]:
        words = shlex.split(command)
        return [str(BIN / words[0].removeprefix(".venv/bin/")), *words[1:]]

    made = subprocess.run(argv(steps[1]), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and (tmp_path / "photo.jpg").is_file(), made.stderr
    located = subprocess.run(argv(steps[2]), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert located.returncode == 0, located.stderr
    assert re.search(r"photo\.jpg: -?\d+\.\d+, -?\d+\.\d+.*relative score", located.stdout), located.stdout
    assert "candidates (best first)" in located.stdout  # --explain

    serve = argv(steps[3])
    assert "--port" not in serve  # the README relies on the default port (8080); the test picks a free one
    port = free_port()
    server = subprocess.Popen([*serve, "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline, health = time.monotonic() + 240, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert health is not None and health.status_code == 200, server.stdout.read() if server.stdout else ""
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "<title>" in page.text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_serve_default_port_is_the_one_the_quickstart_opens() -> None:
    from typer.main import get_command

    from g3.cli import app

    serve = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    port = next(p for p in serve.params if p.name == "port").default
    assert f"http://127.0.0.1:{port}/" in quickstart_block()
    paper = G3Config.load(ROOT / "configs" / "paper.yaml")
    assert f":{port}/" not in str(paper.lmm.base_url)  # g3 and the LMM server it calls do not collide


def test_every_g3_name_the_docs_import_exists() -> None:
    """The Python examples of the README and docs/ import names that exist (a renamed class fails here)."""
    import importlib

    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for page in pages:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            for module, names in re.findall(r"^\s*from (g3[\w.]*) import ([^\n#]+)", block, flags=re.M):
                for name in (n.strip().split(" as ")[0] for n in names.strip("() ").split(",")):
                    if name and not hasattr(importlib.import_module(module), name):
                        missing.append(f"{page.name}: from {module} import {name}")
    assert not missing, "\n".join(missing)
