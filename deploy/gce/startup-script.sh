#!/bin/bash
# spotsweep worker bootstrap: the startup-script of every VM of a gce pool (the daemon puts it in
# the instance metadata). It runs on every boot, so it is idempotent. It reads its settings from
# the instance's metadata attributes, downloads the agent binary from the daemon with the VM's
# own token, and runs `spotsweep agent` as a systemd service (directly where there is no
# systemd, or with SPOTSWEEP_NO_SYSTEMD set). GCE_METADATA_HOST overrides the metadata server,
# as Google's libraries allow; SPOTSWEEP_ROOT the install dir (/opt/spotsweep).
set -euo pipefail

MD="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1"
attr() { curl -fsS -H 'Metadata-Flavor: Google' "$MD/instance/attributes/$1"; }

SERVER=$(attr spotsweep-server)
TOKEN=$(attr spotsweep-token)
POOL=$(attr spotsweep-pool)
SLOTS=$(attr spotsweep-slots)
NAME=$(curl -fsS -H 'Metadata-Flavor: Google' "$MD/instance/name")
ROOT=${SPOTSWEEP_ROOT:-/opt/spotsweep}
mkdir -p "$ROOT/bin" "$ROOT/work"
chmod 700 "$ROOT"

# The agent binary, from the daemon (retried: the daemon may be busy or the network slow to
# come up).
for i in 1 2 3 4 5 6 7 8 9 10; do
  if curl -fsS -H "Authorization: Bearer $TOKEN" -o "$ROOT/bin/spotsweep.new" "$SERVER/api/v1/agent/binary"; then
    break
  fi
  sleep $((i * 2))
done
chmod 755 "$ROOT/bin/spotsweep.new"
mv "$ROOT/bin/spotsweep.new" "$ROOT/bin/spotsweep"

GPUS=""
if command -v nvidia-smi >/dev/null 2>&1; then
  GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
fi

umask 077
cat > "$ROOT/agent.env" <<ENV
SPOTSWEEP_SERVER=$SERVER
SPOTSWEEP_TOKEN=$TOKEN
GCE_METADATA_HOST=${GCE_METADATA_HOST:-}
ENV

ARGS=(agent --pool "$POOL" --slots "$SLOTS" --name "$NAME" --work-dir "$ROOT/work" --watch-preemption)
if [ -n "$GPUS" ]; then ARGS+=(--gpus "$GPUS"); fi

if [ -z "${SPOTSWEEP_NO_SYSTEMD:-}" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  cat > /etc/systemd/system/spotsweep-agent.service <<UNIT
[Unit]
Description=spotsweep agent
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=$ROOT/agent.env
ExecStart=$ROOT/bin/spotsweep ${ARGS[*]}
Restart=always
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=25

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now spotsweep-agent.service
else
  set -a; . "$ROOT/agent.env"; set +a
  exec "$ROOT/bin/spotsweep" "${ARGS[@]}"
fi
