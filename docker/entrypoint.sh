#!/bin/sh
# Entry point of the g3 images: `g3 serve` with its config, address and port from the environment,
# followed by the container's arguments (more `g3 serve` options, e.g. --max-concurrent 8).
#   G3_CONFIG  YAML configuration (docker/Dockerfile: /app/docker/g3.compose.yaml; Dockerfile.vllm: /app/docker/g3.vllm.yaml)
#   G3_HOST    address to listen on (default 0.0.0.0: reachable from outside the container)
#   G3_PORT    port (default 8080; the HEALTHCHECK reads it too)
#   G3_API_KEYS  comma-separated keys required on /v1 (read by g3 serve itself)
# `exec` makes g3 PID 1, so that `docker stop` (SIGTERM) reaches it and it drains in-flight requests.
set -eu
exec g3 serve --config "${G3_CONFIG:-/app/docker/g3.compose.yaml}" --host "${G3_HOST:-0.0.0.0}" --port "${G3_PORT:-8080}" "$@"
