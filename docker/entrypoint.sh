#!/bin/sh
# voiceagent container entrypoint.
#
# `voiceagent serve` is one trio process, so it uses one core. To use every vCPU of the task,
# this script starts WORKERS copies of it (default: the number of CPUs, `nproc`) on the same
# port with REUSE_PORT=1, so the kernel spreads new connections over them (SO_REUSEPORT).
# SIGTERM/SIGINT are forwarded to every worker; each drains its calls and exits. The script
# exits when all have exited: 0 if every worker exited 0, else the first failure's status.
# If one worker dies on its own, the others are stopped too, so the orchestrator sees a
# failed container and replaces it instead of running on at reduced capacity.
#
# Any other command runs as is (`docker run IMAGE voiceagent config load`, `sh`, ...).
set -eu

log() { printf 'entrypoint: %s\n' "$*" >&2; }

if [ "$#" -eq 0 ]; then
    set -- voiceagent serve
fi
if [ "$#" -ne 2 ] || [ "$1" != voiceagent ] || [ "$2" != serve ]; then
    exec "$@"
fi

workers="${WORKERS:-}"
if [ -z "$workers" ]; then
    workers="$(nproc 2>/dev/null || echo 1)"
    case "$(printf '%s' "${PHONE_PAGE:-}" | tr '[:upper:]' '[:lower:]')" in
        1 | true | yes | on)
            # the browser phone's tickets live in the process that served its page
            log "PHONE_PAGE is on: 1 worker, so each page's socket reaches its process"
            workers=1 ;;
    esac
fi
case "$workers" in
    '' | *[!0-9]* | 0*)
        log "WORKERS must be a whole number from 1 up (it was '$workers'); unset it to use one per CPU"
        exit 2 ;;
esac

if [ "$workers" -gt 1 ] && ! python -c '
import sys
from voiceagent.settings import Settings
sys.exit(0 if "reuse_port" in Settings.model_fields else 1)
' 2>/dev/null; then
    log "this voiceagent has no REUSE_PORT setting, so processes cannot share the port;" \
        "running 1 worker instead of $workers"
    workers=1
fi

if [ "$workers" -eq 1 ]; then
    exec "$@"          # one process: it gets the signals directly
fi

export REUSE_PORT=1
export WORKERS="$workers"      # each process takes its part of the container's memory
pids=""
stopping=0
signalled=0

stop_all() {
    for pid in $pids; do
        kill -TERM "$pid" 2>/dev/null || true
    done
}
# shellcheck disable=SC2329  # called from the traps below
on_signal() {
    if [ "$stopping" -eq 0 ]; then
        log "$1 received: draining $workers workers"
    fi
    stopping=1
    signalled=1
    stop_all
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

i=0
while [ "$i" -lt "$workers" ]; do
    # its number: worker 0 alone logs what concerns the server, not each process
    WORKER_INDEX="$i" "$@" &
    pids="$pids $!"
    i=$((i + 1))
done
log "started $workers workers on one port:$pids"

# True while the process exists and has not exited (an exited child stays a zombie, state Z,
# until it is waited for; POSIX sh has no `wait -n`, so look at /proc).
running() {
    [ -r "/proc/$1/status" ] || return 1
    state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)"
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

while [ "$stopping" -eq 0 ]; do
    for pid in $pids; do
        if ! running "$pid"; then
            log "worker $pid exited on its own: stopping the others"
            stopping=1
            break
        fi
    done
    if [ "$stopping" -eq 0 ]; then
        sleep 1 &
        wait "$!" || true          # returns at once when a trapped signal arrives
    fi
done
stop_all

status=0
for pid in $pids; do
    code=0
    while :; do
        wait "$pid" && code=0 || code=$?
        # a wait cut short by a signal returns >128 while the worker still runs: wait again
        if [ "$code" -gt 128 ] && running "$pid"; then
            continue
        fi
        break
    done
    if [ "$code" -eq 143 ] && [ "$signalled" -eq 1 ]; then
        # killed by our SIGTERM before it had set up its handler: it was still starting and
        # had no calls, so nothing was lost
        log "worker $pid was stopped while starting"
        code=0
    fi
    if [ "$code" -ne 0 ]; then
        log "worker $pid exited with status $code"
        if [ "$status" -eq 0 ]; then
            status="$code"
        fi
    fi
done
exit "$status"
