# Sourced by scripts/reproduce_toy.sh and scripts/demo.sh (needs PY and RUNS set).
# stage NAME OUTPUT CMD...: run CMD unless OUTPUT exists; add its wall time to $RUNS/wall_times.json.
stage() {
  local name=$1 output=$2 start
  shift 2
  if [ -e "$output" ]; then echo "== $name: done ($output)"; return; fi
  echo "== $name: $*"
  start=$(date +%s)
  "$@"
  "$PY" - "$RUNS/wall_times.json" "$name" "$(( $(date +%s) - start ))" <<'PYEOF'
import json, pathlib, sys
path, name, seconds = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
times = json.loads(path.read_text()) if path.exists() else {}
times[name] = times.get(name, 0) + seconds
path.write_text(json.dumps(times, indent=2) + "\n")
PYEOF
}
