# /lib/nine.sh: shell library of the test VM, sourced by /init and by every check.
# Variables from /run/config: NINE_PORT, NINE_OPTS, NINE_CHECK_TIMEOUT (seconds a
# check may take, already stretched by the host's load) and any extra ones the
# harness passes (NINE_DIALECT, NINE_CACHE, ...).
. /run/config
TR=/sys/kernel/tracing

# nine_mount DIR [EXTRA_OPTS]: mount the server under test on DIR.
nine_mount() {
    mkdir -p "$1"
    if [ "$NINE_TRANS" = virtio ]; then # QEMU's own server (validation only)
        mount -t 9p -o "trans=virtio,$NINE_OPTS${2:+,$2}" nine "$1"
    elif [ "$NINE_TRANS" = fd ]; then # authenticated by nmount (the key), then trans=fd
        nmount -o "port=$NINE_PORT,$NINE_OPTS${2:+,$2}" 10.0.2.2 "$1"
    else
        mount -t 9p -o "trans=tcp,port=$NINE_PORT,$NINE_OPTS${2:+,$2}" 10.0.2.2 "$1"
    fi
}

nine_mark() {
    [ -n "$NINE_TRACE_RAW" ] && echo "@@check $1" >$TR/trace_marker 2>/dev/null
    return 0
}

# Count the requests the kernel sends and the error replies it gets with
# in-kernel histograms on the 9p tracepoints (cheap: no text trace to format
# and parse under TCG).  NINE_TRACE_RAW=1 also records the full text trace.
nine_trace_start() {
    E=$TR/events/9p
    echo 'hist:keys=type:vals=hitcount:size=256' >$E/9p_client_req/trigger ||
        echo "@@WARN no hist trigger on 9p_client_req"
    echo 'hist:keys=type,err:vals=hitcount:size=256 if err != 0' >$E/9p_client_res/trigger ||
        echo "@@WARN no hist trigger on 9p_client_res"
    if [ -n "$NINE_TRACE_RAW" ]; then
        echo 0 >$TR/tracing_on
        echo "${NINE_TRACE_KB:-32768}" >$TR/buffer_size_kb
        echo 1 >$E/9p_client_req/enable
        echo 1 >$E/9p_client_res/enable
        echo 1 >$TR/tracing_on
        nine_mark mount
    fi
}

# nine_snapshot NAME: print the cumulative histograms, tagged NAME, as
# "@@HREQ NAME TYPE COUNT" and "@@HERR NAME TYPE ERR COUNT" (TYPE is the 9P
# message number, ERR the negative errno); the host takes differences.
nine_snapshot() {
    for _k in req res; do
        awk -v c="$1" -v k=$_k '
            /^\{/ {
                gsub(/[{},]/, " ")
                t = ""; e = ""; n = ""
                for (i = 1; i < NF; i++) {
                    if ($i == "type:") t = $(i + 1)
                    if ($i == "err:") e = $(i + 1)
                    if ($i == "hitcount:") n = $(i + 1)
                }
                if (k == "req") print "@@HREQ", c, t, n
                else print "@@HERR", c, t, e, n
            }
            /Dropped:/ { if ($2 > 0) print "@@WARN histogram dropped", $2 }
        ' $TR/events/9p/9p_client_$_k/hist
    done
}

# the raw text trace (NINE_TRACE_RAW=1 only): "@@T line"
nine_trace_dump() {
    [ -n "$NINE_TRACE_RAW" ] || return 0
    echo 0 >$TR/tracing_on
    grep -v '^#' $TR/trace | sed 's/^/@@T /'
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
    nine_snapshot "$_name"
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
