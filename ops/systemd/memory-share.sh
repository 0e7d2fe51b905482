#!/usr/bin/env bash
# Prints the systemd drop-in that gives each GPU's worker an equal share of this machine's memory:
#   memory-share.sh GPUS > /etc/systemd/system/capture-daemon@.service.d/memory.conf
# MemoryMax is per unit, so a job that runs away (a huge capture, a leak) is OOM-killed inside its own
# worker's cgroup (the worker then retries it: OOMPolicy=continue) instead of starving the other GPUs'
# workers or the system. RESERVE_MB stays for the OS, sshd and the lifecycle watcher.
# MEMINFO overrides /proc/meminfo (tests).
set -euo pipefail

gpus=${1:?usage: memory-share.sh GPUS}
reserve_mb=${RESERVE_MB:-2048}
total_kb=$(awk '/^MemTotal:/ {print $2}' "${MEMINFO:-/proc/meminfo}")
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || { echo "memory-share.sh: GPUS must be a positive integer" >&2; exit 2; }
[ -n "$total_kb" ] || { echo "memory-share.sh: no MemTotal" >&2; exit 2; }
share_mb=$(( (total_kb / 1024 - reserve_mb) / gpus ))
[ "$share_mb" -ge 1024 ] || { echo "memory-share.sh: ${share_mb} MiB per worker is too little" >&2; exit 2; }
printf '# Written at boot by ops/systemd/memory-share.sh: %s GPU worker(s) share this machine.\n' "$gpus"
printf '[Service]\nMemoryMax=%sM\n' "$share_mb"
