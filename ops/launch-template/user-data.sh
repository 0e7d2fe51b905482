#!/bin/bash
# capture-daemon: first-boot provisioning of one EC2 GPU instance (cloud-init runs this once, as root).
#
# scripts/fleet_apply.py fills the @@…@@ values below and puts this file, base64-encoded, into the
# launch template. Steps: packages -> `capture` user -> release -> venv -> Node, npm packages and Chromium
# for the mesh kind -> gsplat's CUDA build (once, here,
# not on the first job: DESIGN §7) -> /etc/capture-daemon/daemon.env from SSM -> one unit per GPU and the
# lifecycle watcher that drains them when the group terminates the instance.
# Log: /var/log/capture-daemon-setup.log (also in the console output). Any failure marks the instance
# Unhealthy, so the Auto Scaling group replaces it instead of paying for a GPU that takes no job.
set -Eeuo pipefail

# --- Filled in by scripts/fleet_apply.py ------------------------------------------------------------
# s3://BUCKET/releases/NAME.tar.gz or https://.../NAME.tar.gz (`git archive` of the repository, no
# --prefix), or a git repository URL, with RELEASE_REF naming the branch, tag or commit to check out.
RELEASE_URL='@@RELEASE_URL@@'
RELEASE_REF='@@RELEASE_REF@@'
# SSM Parameter Store path: each parameter under it (e.g. /capture-daemon/prod/REDIS_URL) is a variable.
SSM_PATH='@@SSM_PATH@@'

# --- Layout shared with ops/systemd/capture-daemon@.service ------------------------------------------
APP_DIR=/opt/capture-daemon
VENV=$APP_DIR/.venv
ENV_FILE=/etc/capture-daemon/daemon.env
SERVICE_USER=capture
STATE_DIR=/var/lib/capture-daemon
CACHE_DIR=/var/cache/capture-daemon
# gsplat's JIT build lands here (writable by the workers: torch takes a lock file in it on every load).
TORCH_EXTENSIONS_DIR=$CACHE_DIR/torch_extensions
PYTHON=python3.11
# The mesh kind's tools: Node (>= 20; the version the tests ran with) and Playwright's Chromium
NODE_VERSION=20.20.2
NODE_DIR=/opt/node
BROWSERS_DIR=/opt/ms-playwright
LOG=/var/log/capture-daemon-setup.log

exec > >(tee -a "$LOG") 2>&1
started=$(date +%s)
INSTANCE_ID=""
failed_line=""

log() { printf '%s capture-daemon-setup: %s\n' "$(date -u +%FT%TZ)" "$*"; }
die() {
  log "error: $*"
  exit 1
}

on_exit() {
  [ "$1" -ne 0 ] || return 0
  log "FAILED (exit $1${failed_line:+ at line $failed_line}) after $(($(date +%s) - started)) s"
  if [ -n "$INSTANCE_ID" ] && aws autoscaling set-instance-health --instance-id "$INSTANCE_ID" \
    --health-status Unhealthy --no-should-respect-grace-period; then
    log "marked $INSTANCE_ID Unhealthy: the Auto Scaling group replaces it"
  else
    shutdown -h +1 "capture-daemon provisioning failed" # the launch template terminates on shutdown
  fi
}
trap 'failed_line=$LINENO' ERR
trap 'on_exit $?' EXIT

# IMDSv2 (the launch template requires tokens; hop limit 1 keeps them on this host).
imds() {
  local token
  token=$(curl -fsS --retry 5 -X PUT http://169.254.169.254/latest/api/token \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
  curl -fsS --retry 5 -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/$1"
}

[[ $RELEASE_URL != @@* && $SSM_PATH != @@* ]] || die "user data was not rendered by scripts/fleet_apply.py"
INSTANCE_ID=$(imds meta-data/instance-id)
REGION=$(imds meta-data/placement/region)
export AWS_DEFAULT_REGION=$REGION
log "instance $INSTANCE_ID in $REGION, release $RELEASE_URL $RELEASE_REF"

log "waiting for the NVIDIA driver"
for _ in $(seq 60); do
  nvidia-smi -L >/dev/null 2>&1 && break
  sleep 2
done
gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
[ "$gpus" -gt 0 ] || die "nvidia-smi sees no GPU"

log "packages"
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 "$@"; }
apt_get update
apt_get install -y --no-install-recommends "$PYTHON" "$PYTHON-venv" "$PYTHON-dev" build-essential \
  ffmpeg git jq curl ca-certificates
if ! command -v aws >/dev/null; then # the Deep Learning AMIs ship the AWS CLI; other images may not
  "$PYTHON" -m venv /opt/awscli
  /opt/awscli/bin/pip install -q --no-cache-dir awscli
  ln -sf /opt/awscli/bin/aws /usr/local/bin/aws
fi

log "user $SERVICE_USER"
id -u "$SERVICE_USER" >/dev/null 2>&1 ||
  useradd --system --user-group --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
# The unit's StateDirectory= and CacheDirectory= (mode 0750, owned by the service user), made early
# because the gsplat build below writes into the cache.
for dir in "$STATE_DIR" "$CACHE_DIR" "$TORCH_EXTENSIONS_DIR"; do
  install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$dir"
done

log "release"
rm -rf "$APP_DIR"
install -d -m 0755 "$APP_DIR"
case "$RELEASE_URL" in
  s3://*)
    aws s3 cp --only-show-errors "$RELEASE_URL" /tmp/release.tar.gz
    tar -xzf /tmp/release.tar.gz -C "$APP_DIR"
    ;;
  https://*.tar.gz | https://*.tgz)
    curl -fsSL --retry 5 -o /tmp/release.tar.gz "$RELEASE_URL"
    tar -xzf /tmp/release.tar.gz -C "$APP_DIR"
    ;;
  *)
    [ -n "$RELEASE_REF" ] || die "a git RELEASE_URL needs RELEASE_REF"
    git -C "$APP_DIR" init -q
    git -C "$APP_DIR" fetch -q --depth 1 "$RELEASE_URL" "$RELEASE_REF"
    git -C "$APP_DIR" checkout -q FETCH_HEAD
    ;;
esac
rm -f /tmp/release.tar.gz
[ -f "$APP_DIR/requirements.txt" ] || die "the release has no requirements.txt at its top level"
chown -R root:root "$APP_DIR"

log "venv"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --no-cache-dir --upgrade pip
"$VENV/bin/pip" install -q --no-cache-dir -r "$APP_DIR/requirements.txt"
# SIFT extraction and matching on the GPU: the CUDA 12 build of the pinned pycolmap (same version)
PYCOLMAP_BUILD=cuda12 "$APP_DIR/scripts/select_pycolmap.sh" "$VENV"

log "mesh tools: Node.js $NODE_VERSION, daemon/js's npm packages, a headless Chromium"
# Node from nodejs.org, checked against its published SHA-256 (Ubuntu's apt has an older major).
node_tar=node-v$NODE_VERSION-linux-x64.tar.xz
curl -fsSL --retry 5 -o "/tmp/$node_tar" "https://nodejs.org/dist/v$NODE_VERSION/$node_tar"
curl -fsSL --retry 5 "https://nodejs.org/dist/v$NODE_VERSION/SHASUMS256.txt" | grep " $node_tar\$" |
  (cd /tmp && sha256sum -c --quiet -) || die "node $NODE_VERSION: checksum mismatch"
rm -rf "$NODE_DIR"
install -d -m 0755 "$NODE_DIR"
tar -xJf "/tmp/$node_tar" -C "$NODE_DIR" --strip-components 1
rm -f "/tmp/$node_tar"
ln -sf "$NODE_DIR/bin/node" /usr/local/bin/node
(cd "$APP_DIR/daemon/js" && "$NODE_DIR/bin/npm" ci --omit=dev --no-audit --no-fund --loglevel=error)
# Chromium for thumbnails: the headless shell that the pinned playwright-core was built against, and
# the system libraries it needs (Ubuntu's chromium is a snap, which a sandboxed unit cannot run).
PLAYWRIGHT_BROWSERS_PATH=$BROWSERS_DIR "$NODE_DIR/bin/node" \
  "$APP_DIR/daemon/js/node_modules/playwright-core/cli.js" install --with-deps chromium-headless-shell
chromium=$(find "$BROWSERS_DIR" -type f -name chrome-headless-shell -perm -u+x | head -n 1)
[ -n "$chromium" ] || die "no headless Chromium under $BROWSERS_DIR"
chmod -R a+rX "$BROWSERS_DIR"

# nvcc must match torch's CUDA major version; the DLAMI ships several toolkits side by side.
torch_cuda=$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda or "")')
[ -n "$torch_cuda" ] || die "torch in the venv is a CPU build"
cuda_home=""
for dir in "/usr/local/cuda-$torch_cuda" "/usr/local/cuda-${torch_cuda%%.*}".* /usr/local/cuda; do
  if [ -x "$dir/bin/nvcc" ]; then
    cuda_home=$dir
    break
  fi
done
[ -n "$cuda_home" ] || die "no CUDA toolkit for torch's CUDA $torch_cuda under /usr/local"
arch_list=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | sort -u | paste -sd';')
# torch re-runs ninja (a no-op) whenever a process loads the extension; the same variables at run time
# (written to daemon.env below) give the same build commands, so nothing is rebuilt by a worker.
build_env=(
  "TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR"
  "TORCH_CUDA_ARCH_LIST=$arch_list"
  "CUDA_HOME=$cuda_home"
  "PATH=$VENV/bin:$cuda_home/bin:$NODE_DIR/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

log "gsplat CUDA extension (torch CUDA $torch_cuda, toolkit $cuda_home): 2-3 minutes"
runuser -u "$SERVICE_USER" -- env HOME="$STATE_DIR" "${build_env[@]}" MAX_JOBS="$(nproc)" \
  "$VENV/bin/python" - <<'PY'
import time

import torch
from gsplat import rasterization

t0 = time.monotonic()
cuda = torch.device("cuda")
n = 64
means = (torch.randn(n, 3, device=cuda) * 0.2 + torch.tensor([0.0, 0.0, 3.0], device=cuda)).requires_grad_()
quats = torch.nn.functional.normalize(torch.randn(n, 4, device=cuda), dim=-1)
scales = torch.full((n, 3), 0.05, device=cuda)
opacities = torch.full((n,), 0.8, device=cuda)
colors = torch.rand(n, 3, device=cuda)
K = torch.tensor([[[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]]], device=cuda)
image, alpha, _ = rasterization(means, quats, scales, opacities, colors, torch.eye(4, device=cuda)[None], K, 32, 32)
image.sum().backward()  # the backward kernels live in the same extension: prove they load too
torch.cuda.synchronize()
assert image.shape == (1, 32, 32, 3) and float(alpha.max()) > 0 and means.grad is not None
print(f"gsplat CUDA extension ready in {time.monotonic() - t0:.0f} s on {torch.cuda.get_device_name(0)}")
PY

log "environment from SSM $SSM_PATH"
install -d -o root -g "$SERVICE_USER" -m 0750 /etc/capture-daemon
env_tmp=$(mktemp) # 0600 root: secrets are never readable by others, even briefly
{
  echo "# Written at first boot from SSM Parameter Store $SSM_PATH (ops/launch-template/user-data.sh)."
  echo "AWS_REGION=$REGION"
  aws ssm get-parameters-by-path --path "$SSM_PATH" --recursive --with-decryption --output json |
    jq -r '.Parameters[] | (.Name | split("/") | last) as $name
      | if ($name | test("^[A-Z_][A-Z0-9_]*$")) and (.Value | test("[\\n\\r]") | not)
        then "\($name)=\(.Value | @json)" else error("unusable parameter \(.Name)") end'
  # Provisioning facts, last so that they win: the workers load the extension built above, and the
  # mesh kind draws thumbnails with the Chromium installed above.
  printf '%s\n' "${build_env[@]}" "CHROMIUM_PATH=$chromium"
} >"$env_tmp"
grep -q '^REDIS_URL=' "$env_tmp" || die "no REDIS_URL parameter under $SSM_PATH"
install -o root -g "$SERVICE_USER" -m 0640 "$env_tmp" "$ENV_FILE"
rm -f "$env_tmp"

log "systemd: capture-daemon@0..$((gpus - 1))"
install -m 0644 "$APP_DIR/ops/systemd/capture-daemon@.service" /etc/systemd/system/
if [ -f "$APP_DIR/ops/systemd/capture-daemon.target" ]; then
  install -m 0644 "$APP_DIR/ops/systemd/capture-daemon.target" /etc/systemd/system/
fi
# Each GPU's worker gets an equal share of the memory (MemoryMax), so one job cannot starve the others.
mkdir -p /etc/systemd/system/capture-daemon@.service.d
bash "$APP_DIR/ops/systemd/memory-share.sh" "$gpus" >/etc/systemd/system/capture-daemon@.service.d/memory.conf
systemctl daemon-reload
# The unit's DeviceAllow= needs /dev/nvidia-uvm* to exist before it starts; the CUDA run above loaded the
# module, this makes sure of the nodes (the workers cannot: NoNewPrivileges).
if command -v nvidia-modprobe >/dev/null; then nvidia-modprobe -u -c=0 -m; fi
units=()
for ((gpu = 0; gpu < gpus; gpu++)); do units+=("capture-daemon@$gpu.service"); done
systemctl enable --now "${units[@]}"
if [ -f /etc/systemd/system/capture-daemon.target ]; then
  systemctl enable --now capture-daemon.target
fi
# Drains the workers when the group terminates this instance (lifecycle-hook.json).
install -m 0644 "$APP_DIR/ops/launch-template/capture-daemon-lifecycle.service" /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now capture-daemon-lifecycle.service

log "ready: $gpus worker(s) in $(($(date +%s) - started)) s"
