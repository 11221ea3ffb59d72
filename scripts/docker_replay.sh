#!/usr/bin/env bash
# Replay the Dockerfile's install and start commands in a fresh virtual environment (no Docker engine needed),
# then check the server answers: /health, a score, an OpenAI completion, /metrics, and the HEALTHCHECK command.
#
#   scripts/docker_replay.sh                   # torch from PyTorch's CPU index, as the Dockerfile does
#   TORCH_INDEX=local scripts/docker_replay.sh # torch from pip's configured indexes / find-links (offline)
#   KEEP=1 ...                                 # keep the work directory
#
# The pip lines and the ENTRYPOINT, HEALTHCHECK and ENV of the Dockerfile are read from it, so the two cannot
# drift: paths are mapped (/wheels, /tmp/constraints.txt) and apt-get lines are checked, not run (they need
# root): the build needs g++, the kernels need libgomp at run time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/Dockerfile"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
WORK="$(mktemp -d -t selfish-docker-replay.XXXXXX)"
PORT="${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
SERVER_PID=""

log() { printf '[replay] %s\n' "$*" >&2; }
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
  fi
  if [[ -z "${KEEP:-}" ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

# RUN lines (continuations joined), in order, with the stage they belong to.
mapfile -t RUNS < <(awk '
  /^FROM / { stage = ($0 ~ / AS build/) ? "build" : "run" }
  { line = $0 }
  cont { buf = buf " " line } !cont { buf = line }
  { cont = sub(/\\$/, "", buf) }
  !cont && buf ~ /^RUN / { sub(/^RUN /, "", buf); print stage "\t" buf }
' "$DOCKERFILE")
ENTRY="$(sed -n 's/^ENTRYPOINT \["\(.*\)"\]$/\1/p' "$DOCKERFILE" | sed 's/", "/ /g')"
HEALTH="$(awk '/^HEALTHCHECK/ {h=1} h {buf = buf $0} h && !/\\$/ {print buf; exit}' "$DOCKERFILE" \
          | sed 's/\\//; s/.*CMD //')"
[[ ${#RUNS[@]} -gt 0 && -n "$ENTRY" && -n "$HEALTH" ]] || { log "could not read $DOCKERFILE"; exit 1; }

command -v g++ >/dev/null || { log "g++ is missing (the build stage installs it)"; exit 1; }
"$PYTHON" - <<'EOF' || { echo "[replay] libgomp.so.1 is missing (the run stage installs libgomp1)" >&2; exit 1; }
import ctypes; ctypes.CDLL("libgomp.so.1")
EOF

log "work directory $WORK; fresh venv with $("$PYTHON" --version)"
"$PYTHON" -m venv "$WORK/venv"
export PATH="$WORK/venv/bin:$PATH" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$WORK/src" "$WORK/wheels"
# The build stage's COPY lines: the same files, nothing else from the working tree.
cp -r "$ROOT"/{pyproject.toml,setup.py,README.md,constraints.txt,selfish_deploy,training,serving} "$WORK/src/"
find "$WORK/src" -name '__pycache__' -prune -exec rm -rf {} + -o -name '*.so' -exec rm -f {} +

for entry in "${RUNS[@]}"; do
  stage="${entry%%$'\t'*}"; cmd="${entry#*$'\t'}"
  if [[ "$cmd" == apt-get* ]]; then log "($stage) skipped, checked above: ${cmd:0:80}..."; continue; fi
  cmd="${cmd//\/wheels/$WORK/wheels}"
  cmd="${cmd//\/tmp\/constraints.txt/$WORK/src/constraints.txt}"
  if [[ "$TORCH_INDEX" == local ]]; then
    cmd="${cmd//--index-url https:\/\/download.pytorch.org\/whl\/cpu/}"
  else
    cmd="${cmd//https:\/\/download.pytorch.org\/whl\/cpu/$TORCH_INDEX}"
  fi
  [[ "$cmd" == useradd* ]] && { log "($stage) skipped (needs root): $cmd"; continue; }
  log "($stage) $cmd"
  # the build stage works in WORKDIR /src; the run stage in / (here an empty directory, so that Python imports
  # the installed package, not the source tree)
  dir="$WORK/src"; [[ "$stage" == run ]] && dir="$WORK/run"
  mkdir -p "$dir"
  (cd "$dir" && bash -euo pipefail -c "$cmd")
done

# Start as the ENTRYPOINT does, with the image's ENV (SELFISH_HOST/PORT), here on a free loopback port.
log "start: $ENTRY (SELFISH_PORT=$PORT)"
(cd "$WORK" && SELFISH_HOST=127.0.0.1 SELFISH_PORT="$PORT" HF_HOME="$WORK/hf" exec $ENTRY) \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

URL="http://127.0.0.1:$PORT"
export SELFISH_PORT="$PORT" URL
for _ in $(seq 1 240); do
  if python -c "import urllib.request, os; urllib.request.urlopen(os.environ['URL'] + '/health', timeout=2)" 2>/dev/null
  then break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; log "the server exited"; exit 1; }
  sleep 0.5
done

log "checking $URL"
python - <<'EOF'
import json, os, urllib.request

url = os.environ["URL"]

def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read().decode()

status, health = call("/health")
assert status == 200 and json.loads(health)["status"] == "ok", health
status, score = call("/v1/score", {"text": "the company said"})
assert status == 200 and len(json.loads(score)["logprobs"]) == 4, score
status, out = call("/v1/completions", {"prompt": "the stock market", "max_tokens": 5, "seed": 1})
assert status == 200 and json.loads(out)["usage"]["completion_tokens"] == 5, out
status, info = call("/info")
info = json.loads(info)
assert info["kernels"].startswith("compiled"), info  # the compiled kernels were built and are in use
status, metrics = call("/metrics")
assert "selfish:prompt_tokens_total" in metrics
import importlib.util
missing = [m for m in ("matplotlib", "pyarrow") if importlib.util.find_spec(m)]  # networkx: torch needs it
assert not missing, f"training-only packages installed: {missing}"
print(f"[replay] ok: health, score, completion, metrics; kernels: {info['kernels']}")
EOF
log "HEALTHCHECK: $HEALTH"
bash -c "$HEALTH" && log "HEALTHCHECK ok"
