# /lib/nine.sh: shell library of the test VM, sourced by /init and by every check.
# Variables from /run/config: NINE_PORT, NINE_OPTS, NINE_CHECK_TIMEOUT and any
# extra ones the harness passes (NINE_DIALECT, NINE_CACHE, ...).
. /run/config
TR=/sys/kernel/tracing

# nine_mount DIR [EXTRA_OPTS]: mount the server under test on DIR.
nine_mount() {
    mkdir -p "$1"
    mount -t 9p -o "trans=tcp,port=$NINE_PORT,$NINE_OPTS${2:+,$2}" 10.0.2.2 "$1"
}

nine_mark() {
    echo "@@check $1" >$TR/trace_marker 2>/dev/null
}

nine_trace_start() {
    echo 0 >$TR/tracing_on
    echo "${NINE_TRACE_KB:-32768}" >$TR/buffer_size_kb
    echo 1 >$TR/events/9p/9p_client_req/enable || echo "@@WARN no 9p_client_req tracepoint"
    echo 1 >$TR/events/9p/9p_client_res/enable || echo "@@WARN no 9p_client_res tracepoint"
    echo 1 >$TR/tracing_on
    nine_mark mount
}

# Summarise the trace: per check, how many requests of each type, and which
# requests got an error reply (err is the negative errno the client saw).
nine_trace_dump() {
    echo 0 >$TR/tracing_on
    awk '
        BEGIN { chk = "mount" }
        /^# entries-in-buffer/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\/[0-9]+$/) { split($i, a, "/"); print "@@TRACESTAT", a[1], a[2] }
            next
        }
        /tracing_mark_write: @@check / { chk = $NF; next }
        / 9p_client_req: / {
            for (i = 1; i < NF; i++) if ($i == "request") { req[chk " " $(i + 1)]++; break }
            next
        }
        / 9p_client_res: / {
            op = ""; err = 0
            for (i = 1; i < NF; i++) {
                if ($i == "response") op = $(i + 1)
                if ($i == "err") err = $(i + 1)
            }
            if (err != 0) bad[chk " " op " " err]++
            next
        }
        END {
            for (k in req) print "@@REQ", k, req[k]
            for (k in bad) print "@@ERR", k, bad[k]
        }' $TR/trace
}

# run_check NAME [FUNCTION]: run FUNCTION (default check_NAME, from /run/lib.sh)
# in a fresh shell with "set -e", working directory /mnt/NAME, and a timeout;
# print its output as "@@OUT NAME ..." lines and its verdict as
# "@@RESULT NAME PASS|FAIL rc SECONDS".
run_check() {
    _name=$1
    _fn=${2:-check_$1}
    nine_mark "$_name"
    _t0=$(cut -d' ' -f1 /proc/uptime)
    _out=$(cd / && timeout "${NINE_CHECK_TIMEOUT:-120}" sh -c "
        . /lib/nine.sh
        . /run/lib.sh
        mkdir -p /mnt/$_name && cd /mnt/$_name || exit 99
        set -e
        $_fn" </dev/null 2>&1)
    _rc=$?
    _t1=$(cut -d' ' -f1 /proc/uptime)
    [ -n "$_out" ] && echo "$_out" | sed "s/^/@@OUT $_name /"
    _secs=$(awk "BEGIN { print $_t1 - $_t0 }")
    if [ $_rc = 0 ]; then
        echo "@@RESULT $_name PASS $_rc $_secs"
    else
        echo "@@RESULT $_name FAIL $_rc $_secs"
    fi
}

# Helpers for checks.
fail() {
    echo "FAIL: $*"
    exit 1
}

# expect_eq WHAT GOT WANT
expect_eq() {
    [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}

# expect_errno ERRNAME CMD...: CMD must fail, and its message must name the
# error (t9 prints errno names; busybox tools print strerror texts).
expect_errno() {
    _want=$1
    shift
    if _o=$("$@" 2>&1); then
        fail "'$*' succeeded ($_o), expected $_want"
    fi
    case $_want in
    EPERM) _txt="Operation not permitted" ;;
    EOPNOTSUPP | ENOTSUP) _txt="Operation not supported" ;;
    ENOSYS) _txt="Function not implemented" ;;
    EINVAL) _txt="Invalid argument" ;;
    ENOTEMPTY) _txt="Directory not empty" ;;
    ENOENT) _txt="No such file or directory" ;;
    EEXIST) _txt="File exists" ;;
    ENODATA) _txt="No data available" ;;
    *) _txt=$_want ;;
    esac
    case $_o in
    *"$_want"* | *"$_txt"*) echo "expected failure: $_o" ;;
    *) fail "'$*' gave '$_o', expected $_want" ;;
    esac
}

dialect_is() {
    for _d; do [ "$NINE_DIALECT" = "$_d" ] && return 0; done
    return 1
}
