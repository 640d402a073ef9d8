#!/usr/bin/env bash
# `make compose-test`: compose.yaml's stack for real. Builds the image (container/image.sh's
# path), starts Redis (AOF on a volume), two replicas and the example executor, then checks:
#   the image: non-root numeric USER, exec-form CMD `python -m app serve`, HOST=0.0.0.0
#   both replicas' /health (Redis ok, the executor healthy)
#   a task through each replica: POST /tasks, GET /tasks/{id} polled until `completed`,
#     the output checked; each task read back through the other replica
#   every container's health check `healthy`; every process in every container non-root
#   Redis's AOF on the volume: Redis restarted, both tasks read back through a replica
# then stops the stack and removes its containers, network and volume. Exits non-zero and
# says what failed (with the containers' state and logs) on any failure. Needs an engine
# (started here where none runs, as root) and curl; not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=container/lib.sh
. container/lib.sh

PROJECT=taskstream-compose-test
DEADLINE=${COMPOSE_TEST_DEADLINE:-90}  # seconds for each wait
# The stack as compose.yaml defines it, whatever this shell has set.
unset API_KEY QUEUE_API_KEY EXECUTOR_URLS EAS_TOKEN TARGET_API_BASE_URL EAS_TARGETS
command -v curl >/dev/null || fail "curl is not installed"

ensure_engine
pick_build
pick_compose
choose_base
build_image

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
TASKSTREAM_PORT=127.0.0.1:$(free_port)
TASKSTREAM_2_PORT=127.0.0.1:$(free_port)
export TASKSTREAM_PORT TASKSTREAM_2_PORT
dc() { "${COMPOSE[@]}" -p "$PROJECT" -f compose.yaml "$@"; }
ok() { printf '%s\n' "ok: $*" >&2; }

# py FILE EXPR: EXPR evaluated on the JSON document in FILE as `d` (printed; '' on errors).
py() { python3 -c 'import json, sys
try: print(eval(sys.argv[2], {"d": json.load(open(sys.argv[1]))}))
except Exception: print("")' "$1" "$2"; }

# until_ok WHAT COMMAND...: the command succeeds within $DEADLINE s, polled every 0.5 s; on
# a timeout the failure shows the last answer the command left in $TMP/last.
until_ok() {
    local what=$1 deadline=$((SECONDS + DEADLINE))
    shift
    rm -f "$TMP/last"
    until "$@"; do
        ((SECONDS < deadline)) || fail "$what: not within ${DEADLINE} s; last answer: $(cat "$TMP/last" 2>/dev/null)"
        sleep 0.5
    done
}

TMP=$(mktemp -d)
cleanup() {
    local rc=$?
    if [ "$rc" != 0 ]; then
        echo "== compose ps" >&2
        dc ps >&2 || true
        echo "== last log lines" >&2
        dc logs --no-color --tail 40 >&2 || true
    fi
    dc down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || true
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT

# -- the image, without running it
user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$TASKSTREAM_IMAGE")
uid=${user%%:*}
[[ "$uid" =~ ^[0-9]+$ && "$uid" != 0 ]] || fail "image USER is '$user', not a numeric non-root uid"
cmd=$("$DOCKER" image inspect -f '{{json .Config.Cmd}}' "$TASKSTREAM_IMAGE")
[ "$cmd" = '["python","-m","app","serve"]' ] || fail "image CMD is $cmd"
"$DOCKER" image inspect -f '{{json .Config.Env}}' "$TASKSTREAM_IMAGE" | grep -q '"HOST=0.0.0.0"' \
    || fail "image ENV has no HOST=0.0.0.0"
ok "image $TASKSTREAM_IMAGE: USER $user, CMD $cmd, HOST=0.0.0.0"

# -- start (leftovers of an interrupted run first)
dc down -v --remove-orphans >/dev/null 2>&1 || true
start=$SECONDS
dc up -d --no-build || fail "compose up"
ok "stack up (replicas on $TASKSTREAM_PORT and $TASKSTREAM_2_PORT) in $((SECONDS - start)) s"

healthy() {  # healthy ADDR: /health 200 with Redis ok and a healthy executor
    curl -sS -o "$TMP/health" "http://$1/health" 2>"$TMP/last" && cp "$TMP/health" "$TMP/last" \
        && [ "$(py "$TMP/health" 'd["redis"] == "ok" and d["executors"]["healthy"] >= 1')" = True ]
}
for addr in "$TASKSTREAM_PORT" "$TASKSTREAM_2_PORT"; do
    until_ok "replica $addr /health healthy with a healthy executor" healthy "$addr"
    ok "replica $addr /health: $(cat "$TMP/health")"
done

# -- a task through each replica
ids=()
for addr in "$TASKSTREAM_PORT" "$TASKSTREAM_2_PORT"; do
    code=$(curl -sS -o "$TMP/post" -w '%{http_code}' -X POST "http://$addr/tasks" \
        -H 'Content-Type: application/json' -d "{\"code\": \"print('via $addr', 6*7)\"}") \
        || fail "POST /tasks on $addr"
    [ "$code" = 201 ] || fail "POST /tasks on $addr answered $code: $(cat "$TMP/post")"
    ids+=("$(py "$TMP/post" 'd["eval_id"]')")
done
finished() {  # finished ADDR ID: the record is completed or failed (then the wait stops)
    curl -sS -o "$TMP/task" "http://$1/tasks/$2" 2>"$TMP/last" && cp "$TMP/task" "$TMP/last" \
        && [[ "$(py "$TMP/task" 'd["status"]')" =~ ^(completed|failed)$ ]]
}
check_task() {  # check_task ADDR ID ORIGIN: completed, by the executor, with ORIGIN's output
    local status output
    until_ok "task $2 finished (read through $1)" finished "$1" "$2"
    status=$(py "$TMP/task" 'd["status"], d["result"]["status"], d["result"]["exit_code"]')
    output=$(py "$TMP/task" 'repr(d["result"]["output"])')
    [ "$status" = "('completed', 'success', 0)" ] || fail "task $2 via $1: $status: $(cat "$TMP/task")"
    [ "$output" = "'via $3 42\\n'" ] || fail "task $2 via $1: output $output, want 'via $3 42\\n'"
}
check_task "$TASKSTREAM_PORT" "${ids[0]}" "$TASKSTREAM_PORT"
check_task "$TASKSTREAM_2_PORT" "${ids[1]}" "$TASKSTREAM_2_PORT"
ok "a task through each replica completed on the executor: ${ids[*]}"
check_task "$TASKSTREAM_2_PORT" "${ids[0]}" "$TASKSTREAM_PORT"
check_task "$TASKSTREAM_PORT" "${ids[1]}" "$TASKSTREAM_2_PORT"
ok "each task read back through the other replica: $(cat "$TMP/task")"

# -- health checks and users
container_of() { dc ps -q "$1"; }
health_is() {
    "$DOCKER" inspect -f '{{.State.Health.Status}}' "$(container_of "$1")" >"$TMP/last"
    [ "$(cat "$TMP/last")" = "$2" ]
}
for svc in redis taskstream taskstream-2 executor; do
    until_ok "$svc's health check healthy" health_is "$svc" healthy
done
ok "health checks: redis, taskstream, taskstream-2, executor healthy"
for svc in taskstream taskstream-2 executor; do
    [ "$(dc exec -T "$svc" id -u)" = "$uid" ] || fail "$svc: 'id -u' is not $uid"
done
for svc in redis taskstream taskstream-2 executor; do
    "$DOCKER" top "$(container_of "$svc")" -o uid,pid,args >"$TMP/top"
    awk 'NR > 1 && $1 == 0 {bad = 1} END {exit bad}' "$TMP/top" \
        || fail "$svc runs a process as root: $(cat "$TMP/top")"
    ok "$svc's processes: $(awk 'NR > 1 {printf "%s(uid %s) ", $3, $1}' "$TMP/top")"
done

# -- the executor's confinement (compose.yaml): no capabilities, no new privileges, a
# read-only root filesystem with a writable /tmp
dc exec -T executor sh -c 'grep -E "^(CapEff|NoNewPrivs):" /proc/self/status' >"$TMP/status"
grep -Eq '^CapEff:[[:space:]]+0+$' "$TMP/status" || fail "executor has capabilities: $(cat "$TMP/status")"
grep -Eq '^NoNewPrivs:[[:space:]]+1$' "$TMP/status" || fail "executor lacks no-new-privileges: $(cat "$TMP/status")"
if dc exec -T executor touch /srv/x 2>/dev/null; then fail "executor's root filesystem is writable"; fi
dc exec -T executor sh -c 'touch /tmp/x && rm /tmp/x' || fail "executor's /tmp is not writable"
ok "executor: CapEff 0, NoNewPrivs 1, read-only root, writable /tmp"

# -- Redis's AOF on the volume: restart Redis, the tasks are still there
dc exec -T redis sh -c 'ls /data/appendonlydir/*.aof' >"$TMP/aof" || fail "no AOF files in redis:/data/appendonlydir"
ok "AOF files on the volume: $(tr '\n' ' ' <"$TMP/aof")"
dc restart redis >/dev/null || fail "restart redis"
until_ok "redis healthy after its restart" health_is redis healthy
until_ok "replica $TASKSTREAM_PORT healthy after Redis's restart" healthy "$TASKSTREAM_PORT"
check_task "$TASKSTREAM_PORT" "${ids[0]}" "$TASKSTREAM_PORT"
check_task "$TASKSTREAM_PORT" "${ids[1]}" "$TASKSTREAM_2_PORT"
ok "Redis restarted on its AOF: both tasks read back"

# -- stop (SIGTERM to each container's PID 1: exec-form CMDs, so the servers themselves
# get it and drain) and clean up
start=$SECONDS
dc stop --timeout 30 >/dev/null 2>&1 || fail "compose stop"
for svc in redis taskstream taskstream-2 executor; do
    code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$(container_of "$svc")")
    [ "$code" = 0 ] || fail "$svc exited $code on SIGTERM, not 0: $(dc logs --no-color --tail 10 "$svc")"
done
ok "all four stopped on SIGTERM with exit code 0 in $((SECONDS - start)) s"
dc down -v --remove-orphans --timeout 30 >/dev/null 2>&1 || fail "compose down"
left=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT")
[ -z "$left" ] || fail "containers left after down: $left"
if "$DOCKER" volume ls -q | grep -q "^${PROJECT}_redis-data$"; then fail "volume ${PROJECT}_redis-data left"; fi
ok "stack removed (containers, network, volume)"
echo "compose-test: all checks passed" >&2
