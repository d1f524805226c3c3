#!/usr/bin/env bash
# deploy_kubernetes.sh -- deploy/kubernetes as shipped, offline: every object
# passes the schema check of k8s_check.py (the API's models from Debian's
# python3-kubernetes, the ServiceMonitor CRD's fields) and the references
# between them hold; the check rejects what it should. Then the pods' parts
# run for real: the ConfigMap's configuration with the Secret's keys (Redis
# on loopback, a mock exchange), the liveness path answering 200 and the
# readiness command (run verbatim from deployment.yaml) passing while the
# collectors run and failing when none does.
. "$(dirname "$0")/common.bash"

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
K8S=$ROOT/deploy/kubernetes
PY=/usr/bin/python3
CHECK=$(dirname "$0")/k8s_check.py
if ! $PY -c 'import kubernetes.client, yaml' 2>/dev/null; then
  not_ok "python3-kubernetes and python3-yaml (apt-get install python3-kubernetes)"
  finish
  exit 1
fi

$PY "$CHECK" "$K8S"/*.yaml >"$WORK/check.out" 2>&1
code=$?
if [ "$code" = 0 ] && [ ! -s "$WORK/check.out" ]; then ok "the manifests pass the schema check"; else
  not_ok "the manifests pass the schema check"; sed 's/^/    /' "$WORK/check.out"; fi
kinds=$(cat "$K8S"/*.yaml | sed -n 's/^kind: //p' | sort | tr '\n' ' ')
check "ConfigMap, Deployment, Kustomization, PodDisruptionBudget, Secret, Service, ServiceMonitor" \
  [ "$kinds" = "ConfigMap Deployment Kustomization PodDisruptionBudget Secret Service ServiceMonitor " ]

# yq-like reads of the manifests
get() { $PY -c "import yaml,sys,json; d=yaml.safe_load(open('$K8S/$1')); print(json.dumps(eval('d' + sys.argv[1])) if not isinstance(eval('d' + sys.argv[1]), str) else eval('d' + sys.argv[1]))" "$2"; }
check "a fleet of 3" [ "$(get deployment.yaml '["spec"]["replicas"]')" = 3 ]
check "the PodDisruptionBudget keeps 2 of them" [ "$(get pdb.yaml '["spec"]["minAvailable"]')" = 2 ]
C='["spec"]["template"]["spec"]["containers"][0]'
check "liveness: GET /health" [ "$(get deployment.yaml "$C"'["livenessProbe"]["httpGet"]["path"]')" = /health ]
grace=$(get deployment.yaml '["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]')
check "terminationGracePeriodSeconds ($grace) above the configuration's shutdown_timeout (20)" \
  bash -c "[ $grace -gt 20 ] && grep -q 'shutdown_timeout = 20,' '$K8S/configmap.yaml'"

# the check can fail: each broken copy is refused, naming the problem
broken() {
  local name=$1 file=$2 want=$3 expr=$4
  mkdir -p "$WORK/broken"
  rm -f "$WORK/broken"/*
  cp "$K8S"/*.yaml "$WORK/broken/"
  $PY - "$WORK/broken/$file" "$expr" <<'PY'
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
d = docs[0]
exec(sys.argv[2])
yaml.safe_dump_all(docs, open(sys.argv[1], "w"))
PY
  $PY "$CHECK" "$WORK/broken"/*.yaml >"$WORK/check.out" 2>&1
  local code=$?
  if [ "$code" = 1 ] && grep -qF -- "$want" "$WORK/check.out"; then ok "refused: $name"; else
    not_ok "refused: $name (exit $code, want '$want')"; sed 's/^/    /' "$WORK/check.out"; fi
}
broken "a misspelt field" deployment.yaml "unknown field 'replica' (V1DeploymentSpec)" \
  'd["spec"]["replica"] = d["spec"].pop("replicas")'
broken "a string for an integer" deployment.yaml "spec.replicas: must be an integer, got str" \
  'd["spec"]["replicas"] = "3"'
broken "a container without a name" deployment.yaml "missing required field 'name' (V1Container)" \
  'del d["spec"]["template"]["spec"]["containers"][0]["name"]'
broken "a probe on a port the container has not" deployment.yaml "livenessProbe names port 'http'" \
  'd["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = "http"'
broken "a selector that misses the pods" pdb.yaml "spec.selector matches no pod template" \
  'd["spec"]["selector"]["matchLabels"] = {"app": "other"}'
broken "a ServiceMonitor field that does not exist" servicemonitor.yaml "unknown field 'scrapeInterval'" \
  'd["spec"]["endpoints"][0]["scrapeInterval"] = "30s"'
broken "a ServiceMonitor on a port the Service has not" servicemonitor.yaml "endpoint port 'metrics' is no port" \
  'd["spec"]["endpoints"][0]["port"] = "metrics"'
broken "a ConfigMap key the volume names but it lacks" configmap.yaml "names key 'sluice.lua', not in the ConfigMap" \
  'd["data"] = {"other.lua": "return {}"}'

# --- the pods' parts, run ------------------------------------------------------------
start_redis || { finish; exit 1; }
cat >"$WORK/mock.lua" <<LUA
local m = require("sluice.mock.binance").start({})
local f = assert(io.open("$WORK/mock.url.tmp", "w"))
f:write(m.url)
f:close()
assert(os.rename("$WORK/mock.url.tmp", "$WORK/mock.url"))
LUA
"$SLUICE" run "$WORK/mock.lua" --control none >"$WORK/mock.out" 2>&1 &
mock_pid=$!
sluice_pid=""
trap 'kill $sluice_pid $mock_pid 2>/dev/null; wait $sluice_pid $mock_pid 2>/dev/null; stop_redis; rm -rf "$WORK"' EXIT
wait_until 10 test -s "$WORK/mock.url" || { not_ok "the mock exchange started"; finish; exit 1; }

mkdir -p "$WORK/etc" "$WORK/run"
get configmap.yaml '["data"]["sluice.lua"]' >"$WORK/etc/sluice.lua"
# the Secret's keys as the container's environment (envFrom), Redis here
$PY -c "import yaml; d=yaml.safe_load(open('$K8S/secret.yaml'))
for k, v in d['stringData'].items(): print(k + '=' + v)" >"$WORK/secret.env"
TOKEN=$(sed -n 's/^SLUICE_ADMIN_TOKEN=//p' "$WORK/secret.env")
args=$($PY -c "import yaml,json; d=yaml.safe_load(open('$K8S/deployment.yaml')); print(' '.join(d$C['args']))")
check "the container runs: run /etc/sluice/sluice.lua --control /run/sluice/sluice.sock" \
  [ "$args" = "run /etc/sluice/sluice.lua --control /run/sluice/sluice.sock" ]
# the readiness command, verbatim but for the paths
$PY -c "import yaml; d=yaml.safe_load(open('$K8S/deployment.yaml'))
print('\0'.join(d$C['readinessProbe']['exec']['command']), end='')" >"$WORK/ready.argv"
mapfile -d '' ready_argv <"$WORK/ready.argv"
check "readiness runs sluice repl on the control socket" \
  [ "${ready_argv[0]} ${ready_argv[1]} ${ready_argv[2]} ${ready_argv[3]}" = "sluice repl /run/sluice/sluice.sock -e" ]
ready_argv[0]=$SLUICE
ready_argv[2]=$WORK/run/sluice.sock

pod() { # pod PORT [ENV=VALUE...]: the container, as the Deployment runs it
  local port=$1; shift
  rm -f "$WORK/run/sluice.sock"
  env $(cat "$WORK/secret.env" | grep -v '^REDIS_URL=') REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" \
    SLUICE_STORE="$WORK/sluice-$port.db" SLUICE_ADMIN__HOST=127.0.0.1 SLUICE_ADMIN__PORT="$port" \
    SLUICE_COLLECTORS__BINANCE_KLINES__BASE_URL="$(cat "$WORK/mock.url")" "$@" \
    "$SLUICE" run "$WORK/etc/sluice.lua" --control "$WORK/run/sluice.sock" >"$WORK/pod-$port.out" 2>&1 &
  sluice_pid=$!
  wait_until 20 test -S "$WORK/run/sluice.sock"
}
ready() { "${ready_argv[@]}" >"$WORK/ready.out" 2>&1; }

PORT=$(free_port)
pod "$PORT"
check "readiness passes once the collectors run" wait_until 30 ready
contains "and says so" "$WORK/ready.out" "ready"
live=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/health")
check "liveness: /health answers 200 ($live)" [ "$live" = 200 ]
leased() { [ -n "$(rcli --scan --pattern 'lease:collector:*')" ]; }
check "the collector's lease is in Redis (REDIS_URL from the Secret)" wait_until 20 leased
st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/status")
check "/status needs the Secret's token (401 without: $st)" [ "$st" = 401 ]
st=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/status")
check "/status with it: 200 ($st)" [ "$st" = 200 ]
m=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/metrics")
check "/metrics (the ServiceMonitor's path) needs no token: 200 ($m)" [ "$m" = 200 ]
kill -TERM "$sluice_pid"
check "SIGTERM ends the pod's process with 0 within the grace period" ended_within "$sluice_pid" "$grace"
check "exit code 0" [ "${code:-}" = 0 ]

PORT=$(free_port)
pod "$PORT" SLUICE_COLLECTORS__BINANCE_KLINES__ENABLED=false
started() { grep -q '"msg":"sluice started"' "$WORK/pod-$PORT.out"; }
wait_until 20 started
check "readiness fails when no collector runs" bash -c "! \"\${@}\" >'$WORK/ready.out' 2>&1" _ "${ready_argv[@]}"
contains "saying why" "$WORK/ready.out" "no collector is running"
kill -TERM "$sluice_pid"
ended_within "$sluice_pid" "$grace"
sluice_pid=""

finish
