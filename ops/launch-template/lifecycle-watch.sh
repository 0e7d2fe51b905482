#!/bin/bash
# Drains this instance when its Auto Scaling group terminates it (scale-in of an idle instance, capacity
# rebalancing, an instance refresh, a health replacement), then lets the termination go on.
#
# The group's terminating lifecycle hook (lifecycle-hook.json) holds the instance in Terminating:Wait;
# IMDS then says `Terminated` at meta-data/autoscaling/target-lifecycle-state. This script, polling it,
# sends a heartbeat, runs scripts/drain_instance.sh --checkpoint (every running job checkpoints and goes
# back to the front of its queue; the workers stop) and completes the hook with CONTINUE. If it cannot,
# the hook's timeout does the same and the workers still get SIGTERM at shutdown. Spot interruptions do
# not come this way: the workers watch the two-minute notice themselves.
#
# Run by capture-daemon-lifecycle.service (as root: it stops units). IMDS_URL, CAPTURE_DAEMON_DRAIN and
# LIFECYCLE_POLL_S exist for tests.
set -Eeuo pipefail

IMDS=${IMDS_URL:-http://169.254.169.254}
DRAIN=${CAPTURE_DAEMON_DRAIN:-/opt/capture-daemon/scripts/drain_instance.sh}
POLL_S=${LIFECYCLE_POLL_S:-5}
TERMINATING=autoscaling:EC2_INSTANCE_TERMINATING

log() { echo "lifecycle-watch: $*"; }
imds() {
  local token
  token=$(curl -fsS -m 5 -X PUT "$IMDS/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
  curl -fsS -m 5 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/$1"
}

# 404 until the instance is in a group, and outside one forever: keep polling, cheaply.
until [ "$(imds autoscaling/target-lifecycle-state 2>/dev/null || true)" = Terminated ]; do
  sleep "$POLL_S"
done

instance=$(imds instance-id)
group=$(imds tags/instance/aws:autoscaling:groupName)
AWS_DEFAULT_REGION=$(imds placement/region)
export AWS_DEFAULT_REGION
log "$instance is leaving $group: draining"
hooks=$(aws autoscaling describe-lifecycle-hooks --auto-scaling-group-name "$group" --output text \
  --query "LifecycleHooks[?LifecycleTransition=='$TERMINATING'].LifecycleHookName") ||
  log "cannot list the group's lifecycle hooks: draining anyway"
for hook in ${hooks:-}; do
  aws autoscaling record-lifecycle-action-heartbeat --auto-scaling-group-name "$group" \
    --lifecycle-hook-name "$hook" --instance-id "$instance" || log "heartbeat for $hook failed"
done

if bash "$DRAIN" --checkpoint; then
  log "workers drained"
else
  log "drain failed (exit $?): the workers get SIGTERM at shutdown instead"
fi

for hook in ${hooks:-}; do
  if aws autoscaling complete-lifecycle-action --auto-scaling-group-name "$group" \
    --lifecycle-hook-name "$hook" --instance-id "$instance" --lifecycle-action-result CONTINUE; then
    log "lifecycle hook $hook completed: termination goes on"
  else
    log "could not complete $hook: its timeout ends the wait"
  fi
done
