#!/bin/sh
# logwrap NAME -- CMD [ARGS...]
#
# Runs CMD with stdout and stderr merged into one ordered stream, appends that stream to
# $BLAST_LOGS_DIR/logs/NAME.log and copies it to our own stdout (so `kubectl logs` keeps
# working). Forwards SIGTERM, SIGINT and SIGHUP to CMD and exits with CMD's exact status
# (128+N when CMD died of signal N). logs/NAME.exit is removed at start and, once CMD has
# ended and its output is in the log, holds the status as decimal digits and a newline
# (written to a temp file, then renamed). A restarted container appends to the same log.
#
# POSIX sh: runs under dash and busybox sh. Needs mkdir, rm, mkfifo, tee, mv and sleep
# (all busybox applets). If GNU `env --default-signal` exists, CMD starts with SIGINT and
# SIGQUIT at their defaults; otherwise CMD inherits them ignored (a POSIX shell ignores them
# for background commands) and a SIGINT we receive is forwarded as SIGTERM so CMD still stops.
# A signal ignored when logwrap starts (nohup, a background shell) stays ignored: a POSIX shell
# cannot trap it, so it is neither forwarded nor fatal; SIGTERM still stops CMD.
#
# Choices:
# - Usage errors exit 2 with a message on stderr. When NAME is valid, the message is also
#   appended to NAME.log and 2 written to NAME.exit, so the failure is not lost with the pod.
# - CMD not found or not executable: the shell's message goes to the log, status 127 or 126.
# - If the volume or the FIFO cannot be set up, logwrap warns on stderr and runs CMD
#   directly (exec), uncaptured: a logging problem never stops the job.
# - Background processes of CMD that keep its output open would keep `tee` from seeing the
#   end. After CMD ends, logwrap waits at most LOGWRAP_DRAIN_SECONDS (default 5) for the
#   output to close, then writes NAME.exit and exits, leaving `tee` to copy what they write
#   while they live (in a pod, the container ends with logwrap).
# - The FIFO lives for microseconds as logs/.NAME.PID.fifo; it is unlinked once both ends
#   are open.

usage='usage: logwrap NAME -- CMD [ARGS...]   (NAME: lowercase letters, digits, "-" and "."; at most 253)'
dir=${BLAST_LOGS_DIR:-/var/run/blast-logs}
logs=$dir/logs

warn() {
    printf 'logwrap: %s\n' "$*" >&2
}

valid_name() {
    [ "${#1}" -ge 1 ] && [ "${#1}" -le 253 ] || return 1
    case $1 in
    *[!abcdefghijklmnopqrstuvwxyz0123456789.-]*) return 1 ;;
    [!abcdefghijklmnopqrstuvwxyz0123456789]* | *[!abcdefghijklmnopqrstuvwxyz0123456789]) return 1 ;;
    esac
    return 0
}

# write_exit STATUS: atomically publish STATUS as logs/NAME.exit.
write_exit() {
    tmp=$logs/.$name.exit.$$
    if printf '%s\n' "$1" >"$tmp" 2>/dev/null && mv -f "$tmp" "$logs/$name.exit" 2>/dev/null; then
        return 0
    fi
    rm -f "$tmp" 2>/dev/null
    warn "cannot write $logs/$name.exit"
}

# usage_error MESSAGE: print it and exit 2; recorded in the log when NAME is known to be valid.
usage_error() {
    warn "$1"
    printf '%s\n' "$usage" >&2
    if [ -n "${name-}" ] && mkdir -p "$logs" 2>/dev/null; then
        rm -f "$logs/$name.exit" 2>/dev/null
        printf 'logwrap: %s\n' "$1" >>"$logs/$name.log" 2>/dev/null
        write_exit 2
    fi
    exit 2
}

# run_uncaptured REASON CMD...: the fallback when capturing cannot be set up.
run_uncaptured() {
    warn "$1; running the command without capturing its output"
    shift
    exec "$@"
}

name=
case ${1-} in
-h | --help)
    printf '%s\n' "$usage"
    exit 0
    ;;
esac
[ "$#" -ge 1 ] || usage_error "missing NAME"
valid_name "$1" || usage_error "invalid NAME '$1': must match [a-z0-9]([-a-z0-9.]*[a-z0-9])? (at most 253 characters)"
name=$1
shift
[ "${1-}" = "--" ] || usage_error "expected '--' after NAME, got '${1-}'"
shift
[ "$#" -ge 1 ] || usage_error "missing CMD after '--'"

log=$logs/$name.log
fifo=$logs/.$name.$$.fifo

mkdir -p "$logs" 2>/dev/null || run_uncaptured "cannot create $logs" "$@"
rm -f "$logs/$name.exit" 2>/dev/null || warn "cannot remove $logs/$name.exit"
command -v tee >/dev/null 2>&1 || run_uncaptured "tee not found" "$@"
rm -f "$fifo" 2>/dev/null
mkfifo "$fifo" 2>/dev/null || run_uncaptured "cannot create a FIFO in $logs" "$@"

# Start CMD through GNU env when it can restore SIGINT/SIGQUIT (not for NAME=VALUE words,
# which env would take as assignments where a shell would not).
int_sig=TERM
case $1 in
*=*) ;;
*)
    if env --default-signal=INT,QUIT >/dev/null 2>&1; then
        int_sig=INT
        set -- env --default-signal=INT,QUIT -- "$@"
    fi
    ;;
esac

cmd_pid=
pending=
got_signal=
drain_expired=
forward() {
    got_signal=1
    if [ -z "$cmd_pid" ]; then
        pending=$1
    else
        kill -s "$1" "$cmd_pid" 2>/dev/null
    fi
}
trap 'forward TERM' TERM
trap 'forward $int_sig' INT
trap 'forward HUP' HUP

# Keep stdin for CMD (a background command would otherwise get /dev/null).
if { true 3<&0; } 2>/dev/null; then
    exec 3<&0
    stdin_open=1
else
    stdin_open=
fi

# tee must outlive signals meant for CMD and must not die of SIGPIPE when nobody reads our
# stdout: it then keeps appending to the log.
(
    trap '' PIPE INT TERM HUP QUIT
    exec tee -a "$log"
) <"$fifo" 3<&- &
tee_pid=$!
# Opening the write end waits for tee's read end, so CMD inherits an open pipe and the FIFO
# can go at once.
exec 4>"$fifo"
rm -f "$fifo"

if [ -n "$stdin_open" ]; then
    (exec "$@") >&4 2>&1 <&3 3<&- 4>&- &
else
    (exec "$@") >&4 2>&1 <&- 4>&- &
fi
cmd_pid=$!
exec 3<&- 4>&-
[ -z "$pending" ] || forward "$pending"

# wait returns early (>128) when a trapped signal arrives; waiting again gives CMD's real
# status (dash and busybox sh remember it once collected; 127 would mean this shell forgot).
status=
while :; do
    got_signal=
    wait "$cmd_pid" 2>/dev/null
    rc=$?
    [ -n "$status" ] && [ "$rc" -eq 127 ] || status=$rc
    [ -n "$got_signal" ] || break
done

drain=${LOGWRAP_DRAIN_SECONDS:-5}
case $drain in
'' | *[!0-9]*) drain=5 ;;
esac
cmd_pid=
trap 'drain_expired=1' USR1
# The timer counts in 1s steps and is stopped with SIGKILL: a TERM could be lost while the
# subshell starts, and a killed subshell leaves at most a 1s `sleep` behind. It repeats its
# signal each second, as one landing just before the `wait` below would go unnoticed.
(
    i=0
    while [ "$i" -lt "$drain" ]; do
        sleep 1
        i=$((i + 1))
    done
    while kill -s USR1 $$; do
        sleep 1
    done
) </dev/null >/dev/null 2>&1 &
timer_pid=$!
while :; do
    got_signal=
    wait "$tee_pid" 2>/dev/null
    [ -n "$got_signal$drain_expired" ] || break
    kill -0 "$tee_pid" 2>/dev/null || break
    if [ -n "$drain_expired" ]; then
        warn "the output of '$name' is still open ${drain}s after the command ended (a background process?); not waiting for it"
        break
    fi
done
kill -s KILL "$timer_pid" 2>/dev/null
wait "$timer_pid" 2>/dev/null

write_exit "$status"
exit "$status"
