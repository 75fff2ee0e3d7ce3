#!/usr/bin/env bash
# What the audit log's commits cost on a given filesystem: the writer's steps alone (the
# `audit_writer` example — records built by the request path's own function, formatted,
# inserted, committed with `synchronous=FULL`, the WAL copied into the database file) run
# ROUNDS times in DIR, each printing the process's user and system time, the wall time
# (mostly the commits' syncs waiting on the disk) and how long the machine's cores were
# busy meanwhile (with the work a sync leaves to the kernel's threads: a journalled
# filesystem's journal commits, the block layer). Point DIR at the filesystem the node's
# `audit.db` lives on: a journalled ext4 or XFS answers a sync differently from tmpfs or
# an ext4 without a journal.
#
# Run:   loadtest/scenarios/audit-sync.sh DIR [RECORDS] [ROUNDS]
#        defaults: 100,000 records, 3 rounds. COMMIT=N commits every N records (the writers'
#        batches are 1,000, the rescue writer's at saturation up to 4,000; at 100 requests a
#        second a commit carries ~10),
#        WAL_EVERY=N copies the WAL every N records (4,000). BASE=path/to/audit_writer runs
#        another build of the example alternated with this tree's (A, B, A, B, …).
# Needs: the release example (built here when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:?usage: audit-sync.sh DIR [RECORDS] [ROUNDS]}
records=${2:-100000}
rounds=${3:-3}
new=$root/target/release/examples/audit_writer
[ -x "$new" ] || cargo build --release -q -p edgegate-benches --example audit_writer --manifest-path "$root/Cargo.toml"
mkdir -p "$dir"
tick=$(getconf CLK_TCK)
# busy_ticks: the machine's busy time so far (user, nice, system, irq, softirq), in ticks.
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
builds=("$new")
[ -n "${BASE:-}" ] && builds=("$BASE" "$new")
echo "records: $records, a commit per ${COMMIT:-1000}, the WAL copied every ${WAL_EVERY:-4000}; in $dir ($(df -T "$dir" | awk 'NR == 2 {print $2}'))"
echo "build user_s system_s wall_s machine_busy_ms"
for ((r = 1; r <= rounds; r++)); do
  for b in "${builds[@]}"; do
    t0=$(busy_ticks)
    # bash's own `time` (user, system, wall seconds of the child): no `time` package needed.
    out=$( { TIMEFORMAT='%U %S %R'; time taskset -c 1 "$b" "$dir" "$records" >/dev/null; } 2>&1 | tail -1)
    t1=$(busy_ticks)
    echo "$b $out $(( (t1 - t0) * 1000 / tick ))"
  done
done
rm -f "$dir"/writer-"$records".db "$dir"/writer-"$records".db-wal "$dir"/writer-"$records".db-shm
