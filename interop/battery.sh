# Guest checks of the kernel-VM interop battery (busybox sh).
#
# One function per check: check_NAME runs with "set -e" in a fresh shell whose
# working directory is /mnt/NAME (created if the host did not pre-create it),
# with /lib/nine.sh sourced (fail, expect_eq, expect_errno, dialect_is,
# nine_mount) and the helper /bin/t9 on PATH.  Exit status 0 = PASS.
# NINE_DIALECT (9p2000.L, 9p2000.u, 9p2000) and NINE_CACHE (none, loose,
# mmap) say what is mounted.  Where a dialect cannot do something, the check
# asserts the exact refusal instead of skipping: see the "dialect_is" branches.
#
# Host side (interop/battery.py): HOST_SETUP pre-creates the inputs of a
# check under EXPORT/NAME, HOST_VERIFY inspects EXPORT/NAME after the boot.
# Adding a check = one function here (+ optional host setup/verify there).
# Checks run in the order they are defined here.

check_ls() {
    # host created a b c sub/
    ls -la
    expect_eq "names" "$(ls -A | tr '\n' ' ')" "a b c sub "
    # (whether "." and ".." come from the server is up to the server)
    expect_eq "ls -la entries" "$(ls -la | grep -cE ' (a|b|c|sub)$')" 4
    expect_eq "ls -l sizes" "$(ls -l a b c | awk '{ print $5 }' | tr '\n' ' ')" "10 10 10 "
    expect_eq "ls -la sub/" "$(ls -A sub)" "inner"
}

check_stat_types() {
    # host created: reg dir lnk(->reg) fifo sock chr(1,3) blk(7,0)
    for f in reg dir lnk fifo sock chr blk; do echo "$f: $(t9 stat $f)"; done
    expect_eq reg "$(t9 stat reg | cut -d' ' -f1,2,6)" "reg 640 5"
    expect_eq dir "$(t9 stat dir | cut -d' ' -f1,2)" "dir 751"
    if dialect_is 9p2000; then
        # plain 9P2000 has no special files: the kernel ignores the .u mode
        # bits and shows anything that is not a directory as a regular file.
        for f in lnk fifo sock chr blk; do
            expect_eq "$f (9p2000)" "$(t9 stat $f | cut -d' ' -f1)" "reg"
        done
    else
        expect_eq lnk "$(t9 stat lnk | cut -d' ' -f1)" "lnk"
        expect_eq "readlink lnk" "$(readlink lnk)" "reg"
        expect_eq fifo "$(t9 stat fifo | cut -d' ' -f1)" "fifo"
        expect_eq sock "$(t9 stat sock | cut -d' ' -f1)" "sock"
        expect_eq chr "$(t9 stat chr | cut -d' ' -f1,7,8)" "chr 1 3"
        expect_eq blk "$(t9 stat blk | cut -d' ' -f1,7,8)" "blk 7 0"
    fi
}

check_mknod() {
    if dialect_is 9p2000; then
        # v9fs refuses special files without the .u/.L extensions: EPERM
        expect_eq "mkfifo (9p2000)" "$(t9 try mkfifo fifo)" EPERM
        expect_eq "mknod c (9p2000)" "$(t9 try mknod-c chr)" EPERM
        expect_errno EPERM t9 mksock sock
        return 0
    fi
    mkfifo fifo
    mknod chr c 1 3
    mknod blk b 7 0
    t9 mksock sock
    expect_eq fifo "$(t9 stat fifo | cut -d' ' -f1)" fifo
    expect_eq chr "$(t9 stat chr | cut -d' ' -f1,7,8)" "chr 1 3"
    expect_eq blk "$(t9 stat blk | cut -d' ' -f1,7,8)" "blk 7 0"
    expect_eq sock "$(t9 stat sock | cut -d' ' -f1)" sock
}

check_cat() {
    expect_eq "cat" "$(cat hello.txt)" "hello from the host"
    expect_eq "cat 100k md5" "$(md5sum <big.txt | cut -d' ' -f1)" "$(cat big.md5)"
    expect_eq "read at offset" "$(dd if=big.txt bs=1 skip=50000 count=10 2>/dev/null)" "$(cat big.at50000)"
}

check_echo() {
    echo one >f
    echo two >>f
    expect_eq "echo >, >>" "$(cat f)" "one
two"
    echo "a longer first line" >g
    echo short >g # O_TRUNC: truncated by the kernel with a setattr
    expect_eq "echo > truncates" "$(cat g)" "short"
    printf 'x' >>g
    expect_eq "size after append" "$(stat -c %s g)" "7"
}

check_big_copy() {
    # 64 MiB of random data created by the host, copied in and back out
    cp ../data/big.bin /tmp/big.bin
    expect_eq "md5 of copy in" "$(md5sum </tmp/big.bin | cut -d' ' -f1)" "$(cat ../data/big.md5)"
    cp /tmp/big.bin out.bin
    rm /tmp/big.bin
    expect_eq "size of copy out" "$(stat -c %s out.bin)" "67108864"
}

check_mkdir_rmdir() {
    mkdir -p a/b/c/d
    [ -d a/b/c/d ] || fail "mkdir -p did not create a/b/c/d"
    expect_errno ENOTEMPTY rmdir a/b
    expect_errno EEXIST mkdir a
    rmdir a/b/c/d a/b/c
    [ ! -e a/b/c ] || fail "a/b/c still there after rmdir"
    mkdir -p keep/x
    expect_eq "ls a" "$(ls a)" "b"
}

check_mv() {
    mkdir d1 d2
    echo one >f1
    mv f1 f1.renamed # same directory
    mv f1.renamed d1/f1.moved # across directories
    mkdir d1/sub
    echo in-sub >d1/sub/g
    mv d1/sub d2/sub # a directory across directories
    echo new >src
    echo old >dst
    mv src dst # over an existing file
    expect_eq "moved file" "$(cat d1/f1.moved)" "one"
    expect_eq "moved dir" "$(cat d2/sub/g)" "in-sub"
    expect_eq "replaced file" "$(cat dst)" "new"
    [ ! -e src ] && [ ! -e f1 ] && [ ! -e d1/sub ] || fail "old names still present"
    if dialect_is 9p2000 9p2000.u; then
        # 9P2000 wstat renames only within a directory: rename(2) across
        # directories gives EXDEV (mv above fell back to copy + remove).
        echo x >xdev
        expect_eq "rename across dirs (no .L)" "$(t9 try rename xdev d1/xdev)" EXDEV
        rm xdev
    fi
}

check_symlink() {
    if dialect_is 9p2000; then
        expect_eq "symlink (9p2000)" "$(t9 try symlink target.txt link)" EPERM
        return 0
    fi
    echo target >target.txt
    ln -s target.txt link
    ln -s /nonexistent/path dangling
    expect_eq readlink "$(readlink link)" "target.txt"
    expect_eq "readlink dangling" "$(readlink dangling)" "/nonexistent/path"
    expect_eq "cat via link" "$(cat link)" "target"
    expect_eq "lstat type" "$(t9 stat link | cut -d' ' -f1)" lnk
    [ -L dangling ] && [ ! -e dangling ] || fail "dangling symlink wrong"
}

check_hardlink() {
    echo shared >a
    if dialect_is 9p2000; then
        expect_eq "link (9p2000)" "$(t9 try link a b)" EPERM
        return 0
    fi
    ln a b
    echo more >>b
    expect_eq "content via other name" "$(cat a)" "shared
more"
    # 9P2000.u stat has no link count field: the kernel reports 1 unless the
    # server adds "HARDLINKCOUNT n" to the extension string (nine and QEMU do);
    # without it tar, cp -a and rsync -H cannot see the hard link.
    expect_eq "link count" "$(stat -c %h a)" 2
    expect_eq "same inode" "$(stat -c %i a)" "$(stat -c %i b)"
    ln a c
    rm c
    expect_eq "after unlink of one name" "$(cat a)" "shared
more"
}

check_chmod() {
    echo x >f
    mkdir d
    chmod 640 f
    chmod 751 d
    expect_eq "chmod file" "$(stat -c %a f)" 640
    expect_eq "chmod dir" "$(stat -c %a d)" 751
    chmod u+x,o+r f
    expect_eq "chmod symbolic" "$(stat -c %a f)" 744
    chmod 640 f
}

check_chown() {
    echo x >f
    if dialect_is 9p2000; then
        # plain 9P2000 carries owner names, not numbers: the kernel sends a
        # wstat that changes nothing; the host checks the owner is unchanged.
        chown 1234:5678 f || true
        return 0
    fi
    chown 1234:5678 f
    expect_eq "chown" "$(stat -c '%u %g' f)" "1234 5678"
    chgrp 4321 f
    expect_eq "chgrp" "$(stat -c '%u %g' f)" "1234 4321"
    chown 1234:5678 f
}

check_touch_times() {
    echo x >f
    touch -d '2001-02-03 04:05:06' f
    expect_eq "mtime" "$(stat -c %Y f)" 981173106
    touch -d '2011-02-03 04:05:06' g
    expect_eq "touch -d creates" "$(stat -c %Y g)" 1296705906
}

check_truncate() {
    printf 'hello world' >f
    truncate -s 1048576 f
    expect_eq "grown size" "$(stat -c %s f)" 1048576
    expect_eq "zeros after old end" "$(tail -c +12 f | tr -d '\000' | wc -c)" 0
    expect_eq "head kept" "$(head -c 11 f)" "hello world"
    truncate -s 5 f
    expect_eq "shrunk size" "$(stat -c %s f)" 5
    expect_eq "shrunk content" "$(cat f)" "hello"
    truncate -s 0 f
    expect_eq "truncated to 0" "$(stat -c %s f)" 0
    printf 'hello' >f
}

check_unlink_open() {
    if dialect_is 9p2000 && [ "$NINE_CACHE" = loose ]; then
        # v9fs 9P2000 (access=any) with cache=loose: after Tremove consumed
        # the dentry's fid, fstat(2) fails with ENOENT in the client, with no
        # error from the server; read/write/ftruncate through the fd must work.
        t9 unlinkopen u fstat-optional
    else
        t9 unlinkopen u
    fi
    [ ! -e u ] || fail "u reappeared"
}

check_df() {
    df -k /mnt
    total=$(df -k /mnt | awk 'NR == 2 { print $2 }')
    if dialect_is 9p2000.L; then
        [ "$total" -gt 0 ] || fail "df total $total"
    else
        # without .L the kernel does not ask the server (no Tstatfs): zeros
        expect_eq "df total (no .L)" "$total" 0
    fi
}

check_find_2000() {
    # host created tree/ with 2000 files: flat/ (1000) and d00..d09 (100 each)
    find tree -type f >/tmp/find.txt
    expect_eq "files found" "$(wc -l </tmp/find.txt)" 2000
    expect_eq "duplicates" "$(sort /tmp/find.txt | uniq -d | wc -l)" 0
    expect_eq "dirs found" "$(find tree -type d | wc -l)" 12
    expect_eq "ls tree/flat" "$(ls tree/flat | wc -l)" 1000
    rm /tmp/find.txt
}

# ls_2000 [MSIZE]: list flat/ (2,000 files, host-made, with names of many lengths) of
# the check's directory through a mount of its own: msize=MSIZE, or none given (the
# kernel's default, 128 KiB).  The kernel fills its buffer of msize - 24 bytes with
# several reads, the last one often too small for the next record: a 9P2000/.u server
# must answer that one with the records that fit (possibly none), not an error.
ls_2000() {
    d=$(basename "$PWD")
    m=/mls${1:-default}
    nine_mount $m "${1:+msize=$1}"
    echo "mounted: $(grep " $m " /proc/mounts)"
    ls $m/$d/flat | sort >/tmp/ls.txt
    umount $m
    expect_eq "names listed" "$(wc -l </tmp/ls.txt)" 2000
    expect_eq "duplicates" "$(uniq -d </tmp/ls.txt | wc -l)" 0
    expect_eq "names" "$(md5sum </tmp/ls.txt | cut -d' ' -f1)" "$(cat names.md5)"
    rm /tmp/ls.txt
}
check_ls_2000() { ls_2000; }
check_ls_2000_msize_8192() { ls_2000 8192; }

check_pwrite_concurrent() {
    t9 pwrite f 8 262144
}

check_flock() {
    # flock(2): sent as Tlock by .L; local to the client in .u/9P2000
    t9 flock f
}

check_fcntl_lock() {
    if dialect_is 9p2000.L; then
        t9 fcntl f
        t9 getlk f
    else
        # v9fs without .L: POSIX locks are a no-op that always succeeds
        # (fs/9p/vfs_file.c v9fs_file_lock): the second locker is not held off.
        expect_errno "granted while held" t9 fcntl f
    fi
}

check_xattr() {
    echo x >f
    if dialect_is 9p2000.L; then
        t9 xattr f
    else
        # xattr handlers exist only for .L mounts
        expect_eq "setxattr (no .L)" "$(t9 try setxattr f)" EOPNOTSUPP
    fi
}

check_tar() {
    # host created src/ (files, subdirs, a 1 MiB random file)
    tar cf /tmp/t.tar src
    mkdir dst
    tar xf /tmp/t.tar -C dst
    rm /tmp/t.tar
    diff -r src dst/src
    expect_eq "tree listing" "$(cd dst && find src | sort | md5sum)" "$(find src | sort | md5sum)"
}

# dd with large blocks through a second mount of its own msize; write, then
# unmount and mount again so that the read comes from the server.
dd_msize() {
    m=/m$1
    nine_mount $m "msize=$1"
    echo "mounted: $(grep " $m " /proc/mounts)"
    dd if=/mnt/data/big.bin of=$m/dd_msize_$1/out bs=1M count=8 2>&1 | tail -n 1
    umount $m
    nine_mount $m "msize=$1"
    sum=$(dd if=$m/dd_msize_$1/out bs=4M 2>/dev/null | md5sum | cut -d' ' -f1)
    umount $m
    expect_eq "md5 of 8 MiB via msize=$1" "$sum" "$(cat /mnt/data/big8.md5)"
}
check_dd_msize_8192() { dd_msize 8192; }
check_dd_msize_65536() { dd_msize 65536; }
check_dd_msize_524288() { dd_msize 524288; }
check_dd_msize_1048576() { dd_msize 1048576; }
