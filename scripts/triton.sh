#!/usr/bin/env bash
# Start/stop a real tritonserver (PyPI nvidia-pytriton wheel, CPU) serving model_repository/.
#   scripts/triton.sh install | up | down | kill | status
# Ports: TRITON_HTTP_PORT (8000), TRITON_GRPC_PORT (8001), TRITON_METRICS_PORT (8002);
# TRITON_MODEL_REPOSITORY (model_repository/) is the repository served;
# TRITON_RUN_DIR (var/triton) holds the pid file, log and backend directory of one server.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.triton-venv
RUN=${TRITON_RUN_DIR:-$ROOT/var/triton}
HTTP=${TRITON_HTTP_PORT:-8000}
GRPC=${TRITON_GRPC_PORT:-8001}
METRICS=${TRITON_METRICS_PORT:-8002}
SITE=$VENV/lib/python3.11/site-packages

install() {
  # The server's python backend stub links Debian's libpython3.11: use that interpreter, and keep
  # this venv apart from the project's (the wheel needs numpy<2). torch serves the stand-in
  # pytorch backend; scipy is what staged models' model.py may use (as in deploy/triton/).
  if [ ! -x "$SITE/pytriton/tritonserver/bin/tritonserver" ]; then
    /usr/bin/python3.11 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet nvidia-pytriton==0.7.0 "numpy<2" onnxruntime
  fi
  if [ ! -d "$SITE/torch" ] || [ ! -d "$SITE/scipy" ]; then
    "$VENV/bin/pip" install --quiet "numpy<2" torch==2.13.0 scipy
  fi
  mkdir -p "$RUN/backends"
  rm -rf "$RUN/backends/python" "$RUN/backends/onnxruntime" "$RUN/backends/pytorch"
  cp -r "$SITE/pytriton/tritonserver/backends/python" "$RUN/backends/python"
  cp "$SITE/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub" "$RUN/backends/python/"
  cp -r "$ROOT/tritonserver-backends/onnxruntime" "$RUN/backends/onnxruntime"
  cp -r "$ROOT/tritonserver-backends/pytorch" "$RUN/backends/pytorch"
}

# Start the server and wait until it is ready: 0 ready, 1 it died while starting, 2 not ready
# in 60 s.
start_once() {
  "$SITE/pytriton/tritonserver/bin/tritonserver" \
    --model-repository "${TRITON_MODEL_REPOSITORY:-$ROOT/model_repository}" --backend-directory "$RUN/backends" \
    --http-address 127.0.0.1 --http-port "$HTTP" --grpc-address 127.0.0.1 --grpc-port "$GRPC" \
    --metrics-port "$METRICS" --allow-metrics false --exit-on-error false --strict-readiness true \
    ${TRITON_EXTRA_ARGS:-} > "$RUN/tritonserver.log" 2>&1 &
  echo $! > "$RUN/pid"
  for _ in $(seq 1 120); do
    if curl -sf "http://127.0.0.1:$HTTP/v2/health/ready" >/dev/null 2>&1; then return 0; fi
    kill -0 "$(cat "$RUN/pid")" 2>/dev/null || return 1
    sleep 0.5
  done
  return 2
}

up() {
  install
  if [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null; then echo "tritonserver already running"; return; fi
  export PATH=$VENV/bin:$PATH
  export LD_LIBRARY_PATH=$SITE/nvidia_pytriton.libs:$SITE/pytriton/tritonserver/external_libs:${LD_LIBRARY_PATH:-}
  # A server that dies while loading its models is started once more (the Python backend has
  # been seen to abort on a boost::interprocess::lock_exception while stubs of a server that
  # had just been stopped were still exiting); a second death, or a timeout, is the answer.
  for attempt in 1 2; do
    status=0; start_once || status=$?
    if [ "$status" = 0 ]; then echo "tritonserver ready on $HTTP/$GRPC"; return; fi
    tail -30 "$RUN/tritonserver.log"
    if [ "$status" = 2 ]; then echo "tritonserver not ready after 60 s"; exit 1; fi
    echo "tritonserver died while starting (attempt $attempt)"
    rm -f "$RUN/pid"
    sleep 2
  done
  exit 1
}

down() {
  if [ -f "$RUN/pid" ]; then
    pid=$(cat "$RUN/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN/pid"
  fi
}

crash() {  # SIGKILL, as a crash would; for tests
  if [ -f "$RUN/pid" ]; then kill -9 "$(cat "$RUN/pid")" 2>/dev/null || true; rm -f "$RUN/pid"; fi
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  kill) crash ;;
  status) curl -sf "http://127.0.0.1:$HTTP/v2/health/ready" && echo ready ;;
  *) echo "usage: $0 install|up|down|kill|status"; exit 2 ;;
esac
