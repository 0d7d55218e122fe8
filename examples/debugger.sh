#!/bin/sh
# The seed's distributed debugger with nothing but a shell: group file operations
# through a kernel mount of the root of a nine tree (examples/debugger.py does the
# same through the Python API).
#
#   nine tree -t topology.ini -l 0.0.0.0:5640      # leaves with --proc
#   mount -t 9p -o trans=tcp,port=5640,version=9p2000.L,cache=none HOST /n/tree
#   gcc -O1 -no-pie -o dbg tests/progs/dbg.c       # on the leaves' machines:
#   ./dbg 0 & ./dbg 1 & ...                        # "PID &value step" on stdout
#   sh examples/debugger.sh /n/tree STEP VALUE node1:4242 node2:4711 ...
#
#   MNT        where the root of the tree (aname "", its merged name space) is mounted:
#              MNT/groups is the group service, MNT/nodes/LEAF/proc/PID a process
#   STEP       the address of step() in the targets, VALUE the address of `value`
#              (one non-PIE executable: what dbg prints, or `nm dbg`)
#   LEAF:PID   one per target process; the k-th one (from 0) is the member pk
#
# Environment: DBG_PREFIX (group names, default dbg: groups dbg-ctl, dbg-mem,
# dbg-wait, dbg-regs), DBG_TIMEOUT (sync timeout of every group, seconds, default 60),
# DBG_RESUME=0 (leave the processes stopped at the breakpoint), DBG_KEEP=1 (keep
# the groups), DBG_STATE (a scratch directory, default /tmp/nine-debugger).
#
# What it does, with busybox's sh, echo, cat, dd, ln, mkdir, rmdir, awk:
#   groups   mkdir MNT/groups/dbg-{ctl,mem,wait,regs}; one symlink per process in
#            each: pk -> ../../nodes/LEAF/proc/PID/{ctl,mem,wait,regs} (relative
#            targets are resolved from the group's directory, /groups/NAME)
#   stop     echo stop > dbg-ctl/data                      every process stops
#   break    the byte at STEP in every mem (`seek STEP count 1`, equiv format=u8: one
#            class), then printf '\314' | dd of=dbg-mem/data seek=STEP: a write of
#            the group's data at file offset STEP writes every member at STEP
#   run      exec 4< dbg-wait/data (held open: the wait files keep the processes
#            attached), echo start > dbg-ctl/data, cat <&4: the group read of the
#            wait files returns when every process has an event; all must say
#            "breakpoint STEP"
#   read     `seek VALUE count 8` and `agg equiv format=i64` on dbg-mem/ctl, cat
#            dbg-mem/data: the equivalence classes of `value` (dbg SEED holds
#            SEED * 1000 + 7 there)
#   resume   the original byte back, `rip STEP` into dbg-regs/data, echo detach >
#            dbg-ctl/data: every process runs on, untraced
#   clean    rmdir the groups
# After each operation the group's `status` is printed; it must say `ok p[0-N]`.
#
# Sourced with DBG_LIB=1 it only defines the steps (dbg_init MNT STEP VALUE
# LEAF:PID..., then dbg_groups, dbg_stop, ...), as tests/test_kernel_group.py does.

dbg_fail() {
    echo "FAIL: $*"
    exit 1
}

dbg_expect() { # WHAT GOT WANT
    [ "$2" = "$3" ] || dbg_fail "$1: got '$2', want '$3'"
}

# dbg_init MNT STEP VALUE LEAF:PID...
dbg_init() {
    [ $# -ge 4 ] || dbg_fail "usage: debugger.sh MNT STEP VALUE LEAF:PID..."
    DBG_MNT=${1%/}
    DBG_G=$DBG_MNT/groups
    DBG_STEP=$2
    DBG_VALUE=$3
    shift 3
    DBG_TARGETS="$*"
    DBG_N=$#
    DBG_P=${DBG_PREFIX:-dbg}
    DBG_STATE=${DBG_STATE:-/tmp/nine-debugger}
    DBG_TIMEOUT=${DBG_TIMEOUT:-60}
    # the member set as the group service folds it
    if [ "$DBG_N" = 1 ]; then DBG_ALL=p0; else DBG_ALL="p[0-$((DBG_N - 1))]"; fi
    for _t in $DBG_TARGETS; do
        case $_t in *?:[0-9]*) ;; *) dbg_fail "bad target '$_t' (want LEAF:PID)" ;; esac
    done
    mkdir -p "$DBG_STATE"
}

# dbg_status KIND: print the status of the group's last operation; every member ok
dbg_status() {
    _s=$(cat "$DBG_G/$DBG_P-$1/status")
    echo "$DBG_P-$1 status: $_s"
    echo "$_s" | grep -qxF "ok $DBG_ALL" || dbg_fail "$DBG_P-$1: not every member ok"
    if echo "$_s" | grep -q '^failed'; then dbg_fail "$DBG_P-$1: some member failed"; fi
}

# dbg_ctl KIND LINE...: commands for the group's ctl file
dbg_ctl() {
    _k=$1
    shift
    for _l; do
        echo "$_l" > "$DBG_G/$DBG_P-$_k/ctl" || dbg_fail "$DBG_P-$_k/ctl: '$_l' refused"
    done
}

dbg_groups() {
    for _k in ctl mem wait regs; do
        mkdir "$DBG_G/$DBG_P-$_k"
        _i=0
        for _t in $DBG_TARGETS; do
            ln -s "../../nodes/${_t%%:*}/proc/${_t##*:}/$_k" "$DBG_G/$DBG_P-$_k/p$_i"
            _i=$((_i + 1))
        done
        dbg_ctl $_k "sync timeout $DBG_TIMEOUT"
        grep -qx "members $DBG_N" "$DBG_G/$DBG_P-$_k/ctl" ||
            dbg_fail "$DBG_P-$_k: not $DBG_N members: $(cat "$DBG_G/$DBG_P-$_k/ctl")"
    done
    echo "groups $DBG_P-ctl $DBG_P-mem $DBG_P-wait $DBG_P-regs: $DBG_N members each"
}

dbg_stop() {
    echo stop > "$DBG_G/$DBG_P-ctl/data"
    dbg_status ctl
}

# dbg_classes ADDR COUNT FORMAT: group read of COUNT bytes at ADDR of every mem,
# equivalence classes shown as FORMAT (4 lines a class: bar, members, bar, value)
dbg_classes() {
    dbg_ctl mem "seek $1 count $2" "agg equiv format=$3"
    cat "$DBG_G/$DBG_P-mem/data"
}

# dbg_byte: the byte at STEP (decimal), the same in every process
dbg_byte() {
    _c=$(dbg_classes "$DBG_STEP" 1 u8)
    echo "$_c" >&2
    dbg_expect "classes of the byte at $DBG_STEP" "$(echo "$_c" | sed -n 2p)" "$DBG_ALL ($DBG_N)"
    dbg_expect "lines" "$(echo "$_c" | wc -l)" 4
    echo "$_c" | sed -n 4p
}

# dbg_poke BYTE: write BYTE (decimal) at STEP in every process
dbg_poke() {
    printf "\\$(printf %03o "$1")" |
        dd of="$DBG_G/$DBG_P-mem/data" bs=1 seek=$((DBG_STEP)) count=1 conv=notrunc \
            2>"$DBG_STATE/dd.err" || dbg_fail "dd: $(cat "$DBG_STATE/dd.err")"
    dbg_status mem
}

dbg_break() {
    _b=$(dbg_byte)
    [ -n "$_b" ] && [ "$_b" != 204 ] || dbg_fail "bad original byte '$_b' at $DBG_STEP"
    echo "$_b" > "$DBG_STATE/orig"
    echo "byte at step() $DBG_STEP: $_b in every process"
    dbg_poke 204 # int3
    dbg_expect "byte after the poke" "$(dbg_byte)" 204
    echo "breakpoint at step() in $DBG_N processes"
}

dbg_run() {
    dbg_ctl wait "agg equiv"
    exec 4< "$DBG_G/$DBG_P-wait/data"
    echo start > "$DBG_G/$DBG_P-ctl/data"
    dbg_status ctl
    _ev=$(cat <&4)
    exec 4<&-
    echo "$_ev"
    dbg_status wait
    _bar=---------------
    dbg_expect "events" "$_ev" "$(printf '%s\n%s (%d)\n%s\nbreakpoint 0x%x' \
        $_bar "$DBG_ALL" "$DBG_N" $_bar $((DBG_STEP)))"
    echo "WaitForAll: $DBG_N processes at the breakpoint"
}

dbg_read() {
    _c=$(dbg_classes "$DBG_VALUE" 8 i64)
    echo "classes of value at $DBG_VALUE:"
    echo "$_c"
    dbg_status mem
    echo "$_c" > "$DBG_STATE/classes"
    # 4 lines a class; the classes' sizes add up to every process
    _n=$(echo "$_c" | awk 'NR % 4 == 2 { sub(/.*\(/, ""); sub(/\).*/, ""); n += $0 } END { print n + 0 }')
    dbg_expect "processes in the classes" "$_n" "$DBG_N"
    dbg_expect "error lines" "$(echo "$_c" | grep -c '^errors:' || true)" 0
    echo "$(echo "$_c" | awk 'END { print NR / 4 }') classes of value"
}

dbg_resume() {
    _b=$(cat "$DBG_STATE/orig") || dbg_fail "no original byte saved (run break first)"
    dbg_poke "$_b"
    dbg_expect "byte after the restore" "$(dbg_byte)" "$_b"
    printf 'rip %s\n' "$DBG_STEP" > "$DBG_G/$DBG_P-regs/data"
    dbg_status regs
    echo detach > "$DBG_G/$DBG_P-ctl/data"
    dbg_status ctl
    echo "step() restored, rip rewound, $DBG_N processes detached"
}

dbg_clean() {
    for _k in ctl mem wait regs; do
        rmdir "$DBG_G/$DBG_P-$_k"
    done
    for _k in ctl mem wait regs; do
        if ls "$DBG_G" | grep -qx "$DBG_P-$_k"; then dbg_fail "$DBG_P-$_k still listed"; fi
    done
    echo "groups removed"
}

dbg_main() {
    set -e
    dbg_init "$@"
    dbg_groups
    dbg_stop
    dbg_break
    dbg_run
    dbg_read
    [ "${DBG_RESUME:-1}" = 0 ] || dbg_resume
    [ "${DBG_KEEP:-0}" = 1 ] || dbg_clean
    echo ok
}

[ -n "$DBG_LIB" ] || dbg_main "$@"
