#!/usr/bin/env bash
# A long schemathesis run against a real `llm2clip serve`: every check, positive and negative data.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/fuzz_contract.sh [--workdir DIR] [--max-examples N] [--seed N] [--port PORT] [--log FILE]

Starts `llm2clip serve` on the demo's artifacts (DIR/bundle, DIR/indexes/image, DIR/indexes/text; DIR defaults
to $LLM2CLIP_WORKDIR or ./llm2clip-work), runs schemathesis against its /openapi.json with every check
(`st run --checks all`, positive and negative data, every phase) and this repository's schemathesis.toml,
stops the server and prints schemathesis' summary (cases generated, failures) plus the count of 5xx answers
the server logged. Run it from the repository root.

  --max-examples N  cases per operation and phase (default 3000: over 5,000 cases in all)
  --seed N          schemathesis seed (default 13)
  --port PORT       where the server listens on 127.0.0.1 (default 18733)
  --log FILE        the full schemathesis output (default fuzz_contract.log in a temporary folder)

Exit status: schemathesis' (0: no failure).
EOF
}

workdir="${LLM2CLIP_WORKDIR:-llm2clip-work}"
max_examples=3000
seed=13
port=18733
log=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workdir) workdir="$2"; shift 2 ;;
    --max-examples) max_examples="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --log) log="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fuzz_contract.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

for path in "$workdir/bundle" "$workdir/indexes/image" "$workdir/indexes/text"; do
  if [[ ! -d "$path" ]]; then
    echo "fuzz_contract.sh: error: $path is missing: run the demo first (llm2clip demo) or pass --workdir" >&2
    exit 2
  fi
done
[[ -f schemathesis.toml ]] || { echo "fuzz_contract.sh: error: run from the repository root" >&2; exit 2; }

python="${PYTHON:-python}"
st="${ST:-st}"
tmp="$(mktemp -d)"
log="${log:-$tmp/fuzz_contract.log}"
server_log="$tmp/serve.log"

"$python" -m llm2clip_cli.main serve --model "$workdir/bundle" --image-index "$workdir/indexes/image" \
  --text-index "$workdir/indexes/text" --host 127.0.0.1 --port "$port" --no-verify --reload-interval 0 \
  --log-level info >"$server_log" 2>&1 &
server=$!
stop_server() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
  fi
}
trap stop_server EXIT

for _ in $(seq 1 240); do
  if "$python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/readyz', timeout=2)" \
       2>/dev/null; then
    break
  fi
  kill -0 "$server" 2>/dev/null || { echo "fuzz_contract.sh: error: the server stopped:" >&2; tail -20 "$server_log" >&2; exit 2; }
  sleep 1
done

cmd=("$st" run "http://127.0.0.1:$port/openapi.json" --checks all --mode all --seed "$seed"
     --max-examples "$max_examples" --workers 1 --no-color)
echo "command: ${cmd[*]}"
start=$(date +%s)
status=0
"${cmd[@]}" >"$log" 2>&1 || status=$?
end=$(date +%s)
stop_server
trap - EXIT

sed -n '/= SUMMARY =/,$p' "$log"
echo "5xx answers in the server log: $(grep -cE '" 5[0-9][0-9]( |$)' "$server_log" || true)"
echo "duration: $((end - start)) s; full output: $log; server log: $server_log"
exit "$status"
