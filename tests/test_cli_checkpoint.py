"""``tiny://aligner`` is accepted wherever a command takes an aligner checkpoint (index build, search, gallery,
aligner info, train --init; they share one option parser), as it is in configurations: the console script,
run as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic import make_corpus

G3 = shutil.which("g3") or str(Path(sys.executable).with_name("g3"))


def g3(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "G3_CACHE_DIR": str(cache)}
    proc = subprocess.run([G3, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"g3 {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_tiny_aligner_is_a_checkpoint_everywhere(tiny_assets: Path, tmp_path: Path) -> None:
    cache = tiny_assets.parent  # the session's tiny assets: tiny://aligner resolves to them
    csv, images = make_corpus(tmp_path / "data", per_region=2)
    out = tmp_path / "index"
    g3("index", "build", "--corpus", str(csv), "--images", str(images), "--checkpoint", "tiny://aligner",
       "--out", str(out), "--min-image-bytes", "0", "--workers", "0", "--no-progress", cache=cache)  # fmt: skip
    query = str(images / "03_0001.png")
    found = json.loads(g3("index", "search", str(out), query, "--checkpoint", "tiny://aligner", "-k", "2",
                          cache=cache).stdout)  # fmt: skip
    assert found[0]["similar"][0]["img_id"] == "03/0001.png"  # the same aligner encoded the index and the query
    info = json.loads(g3("aligner", "info", "tiny://aligner", cache=cache).stdout)
    assert info["trained_parameters"] > 0
