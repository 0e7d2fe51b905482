#!/usr/bin/env bash
# Drain this instance by hand: every running capture-daemon@N worker stops taking jobs, its running job
# finishes (or, with --checkpoint, writes a checkpoint and goes back to the front of its queue to resume
# elsewhere), then the units are stopped. Run as root on the instance, e.g. before maintenance:
#
#   sudo /opt/capture-daemon/scripts/drain_instance.sh                  # wait for running jobs (≤ 1 h)
#   sudo /opt/capture-daemon/scripts/drain_instance.sh --timeout 600    # then checkpoint what still runs
#   sudo /opt/capture-daemon/scripts/drain_instance.sh --checkpoint     # don't wait at all
#
# The units are stopped with systemctl, not by the daemon itself: a worker that exited on its own would
# be restarted by Restart=always into taking jobs again.
set -euo pipefail

APP=${CAPTURE_DAEMON_HOME:-/opt/capture-daemon}
ENV_FILE=${CAPTURE_DAEMON_ENV:-/etc/capture-daemon/daemon.env}
PYTHON=${CAPTURE_DAEMON_PYTHON:-$APP/.venv/bin/python}

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

drain_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --checkpoint) drain_args+=(--checkpoint) ;;
    --timeout) drain_args+=(--timeout "${2:?--timeout needs seconds}"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "drain_instance: unknown option $1" >&2; usage >&2; exit 64 ;;
  esac
  shift
done

mapfile -t units < <(systemctl list-units --type=service --state=active --plain --no-legend \
  'capture-daemon@*.service' | awk '{print $1}')
if [ ${#units[@]} -eq 0 ]; then
  echo "drain_instance: no capture-daemon@ unit is running"
  exit 0
fi

pid_args=()
for unit in "${units[@]}"; do
  pid=$(systemctl show --property=MainPID --value "$unit")
  if [ "$pid" != 0 ]; then pid_args+=(--pid "$pid"); fi
done

echo "drain_instance: draining ${units[*]}"
# The daemon reads its settings (REDIS_URL …) from the same file as the service.
(cd "$APP" && DAEMON_ENV_FILE=$ENV_FILE "$PYTHON" -m daemon drain "${pid_args[@]}" "${drain_args[@]}")
echo "drain_instance: stopping ${units[*]}"
systemctl stop "${units[@]}"
echo "drain_instance: done"
