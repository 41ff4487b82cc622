# shellcheck shell=bash
# The real node of the local control plane: kubelet (built from the control plane's module),
# containerd and runc (Debian's packages) and a loopback-only CNI config, beside the kwok node.
# Sourced by deploy/local/cluster, whose bookkeeping (launch, alive, stop_one, RUN, PKI, BIN) it uses.
#
# The node registers as `localhost`, labelled and tainted kubetask.io/local-node=real:NoSchedule, so
# only pods that select and tolerate it go there; they use hostNetwork. kubelet serves on 127.0.0.1,
# and kube-apiserver reaches it by the node's Hostname address, `localhost` (Hostname is first in its
# --kubelet-preferred-address-types). kubelet only accepts clients with a certificate of the
# cluster CA (kube-apiserver's kubelet-client certificate), so a hostNetwork agent cannot use it.
#
# Machine-wide state, all restored or removed by `node_stop`: the three kernel tunables kubelet sets
# (recorded in RUN/node/sysctl.before), the cgroup tree REAL_NODE_CGROUP in every hierarchy, every
# mount under the node's directories, the containers and shims containerd started, containerd 1.6's
# fixed /run/containerd/{s,fifo}, and kubelet's fixed /var/lib/kubelet/device-plugins and
# /var/log/containers (removed when this node created them). One real node per machine: its owner
# is recorded in REAL_NODE_OWNER.

REAL_NODE_NAME=localhost
REAL_NODE_LABEL=kubetask.io/local-node
REAL_NODE_CGROUP=kubetask-real-node
REAL_NODE_OWNER="$CACHE/real-node.owner"
NODE_DIR="$RUN/node"
# containerd's content store (the imported images) outlives a run; everything else is per run.
CONTAINERD_ROOT="$CACHE/node/containerd-root"
CONTAINERD_SOCK="$NODE_DIR/containerd.sock"
NODE_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
NODE_PACKAGES=(containerd runc containernetworking-plugins)
CNI_BIN_DIR=/usr/lib/cni
PAUSE_IMAGE=localhost/kubetask-pause:dev

ctr_() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# Why this machine cannot run the real node, or nothing when it can (prerequisites are installable).
real_node_unavailable() {
  [[ $(id -u) == 0 ]] || { echo "not root"; return; }
  [[ -d /sys/fs/cgroup ]] || { echo "no cgroup filesystem"; return; }
  if [[ -n "$(tail -n +2 /proc/swaps 2>/dev/null)" ]]; then echo "swap is on (kubelet refuses it)"; return; fi
  if ! command -v containerd >/dev/null || ! command -v runc >/dev/null || [[ ! -x $CNI_BIN_DIR/loopback ]]; then
    command -v apt-get >/dev/null || { echo "containerd, runc or the CNI plugins are missing and apt-get is not there"; return; }
  fi
  local owner
  owner="$(cat "$REAL_NODE_OWNER" 2>/dev/null)" || true
  if [[ -n $owner && $owner != "$RUN" && -f "$owner/kubelet.pid" ]]; then
    local pid
    pid="$(head -n1 "$owner/kubelet.pid")"
    kill -0 "$pid" 2>/dev/null && echo "the real node of $owner runs (one per machine)"
  fi
}

node_prereqs() {
  local missing=() p
  for p in "${NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_containerd_config() {
  mkdir -p "$NODE_DIR/cni" "$CONTAINERD_ROOT"
  printf '%s\n' '{"cniVersion": "1.0.0", "name": "loopback-only", "plugins": [{"type": "loopback"}]}' \
    >"$NODE_DIR/cni/10-loopback.conflist"
  # restrict_oom_score_adj: this machine refuses negative oom_score_adj (no CAP_SYS_RESOURCE).
  cat >"$NODE_DIR/containerd.toml" <<TOML
version = 2
root = "$CONTAINERD_ROOT"
state = "$NODE_DIR/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$CONTAINERD_SOCK"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE_DIR/cni"
TOML
}

write_kubelet_config() {
  mkdir -p "$NODE_DIR/root" "$NODE_DIR/pod-logs" "$NODE_DIR/manifests" "$NODE_DIR/certs"
  cat >"$NODE_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$REAL_NODE_CGROUP
failCgroupV1: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
imageServiceEndpoint: unix://$CONTAINERD_SOCK
address: 127.0.0.1
port: $KUBELET_PORT
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
readOnlyPort: 0
tlsCertFile: $PKI/serving.crt
tlsPrivateKeyFile: $PKI/serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: AlwaysAllow}
podLogsDir: $NODE_DIR/pod-logs
staticPodPath: $NODE_DIR/manifests
protectKernelDefaults: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {}
# No KUBE-FIREWALL, hint or canary chains: the node leaves the machine's packet filter alone.
makeIPTablesUtilChains: false
registerWithTaints:
- {key: $REAL_NODE_LABEL, value: real, effect: NoSchedule}
YAML
}

record_machine_state() {
  local s
  for s in "${NODE_SYSCTLS[@]}"; do
    printf '%s=%s\n' "$s" "$(sysctl -n "$s")"
  done >"$NODE_DIR/sysctl.before"
  : >"$NODE_DIR/created"
  for s in /var/lib/kubelet /var/log/containers /var/lib/cni /run/containerd; do
    [[ -e $s ]] || echo "$s" >>"$NODE_DIR/created"
  done
}

node_start() {
  local why
  why="$(real_node_unavailable)"
  [[ -z $why ]] || die "no real node: $why"
  node_prereqs
  [[ -x "$BIN/kubelet" ]] || cmd_build
  mkdir -p "$NODE_DIR" "$(dirname "$REAL_NODE_OWNER")"
  echo "$RUN" >"$REAL_NODE_OWNER"
  read -r KUBELET_PORT KUBELET_HEALTHZ_PORT <<<"$(pick_ports 2)"
  declare -p KUBELET_PORT KUBELET_HEALTHZ_PORT | sed 's/^declare -- //' >"$NODE_DIR/ports"
  record_machine_state
  create_cgroups
  write_containerd_config
  write_kubelet_config
  launch_exe containerd "$(command -v containerd)" --config "$NODE_DIR/containerd.toml"
  wait_ready containerd 30 ctr_ version
  remove_all_containers  # a containerd that died with its containers left them in the persistent root
  import_node_images
  launch kubelet --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$KUBECONFIG_FILE" --root-dir="$NODE_DIR/root" --cert-dir="$NODE_DIR/certs" \
    --hostname-override="$REAL_NODE_NAME" --node-labels="$REAL_NODE_LABEL=real" --v=1
  wait_ready kubelet 90 real_node_ready
  log "real node $REAL_NODE_NAME ready (kubelet 127.0.0.1:$KUBELET_PORT, containerd $CONTAINERD_SOCK)"
}

real_node_ready() {
  local out
  out="$(kctl get node "$REAL_NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
  [[ $out == True ]]
}

import_node_images() {
  if [[ -x "$HERE/images" ]]; then
    "$HERE/images" import --address "$CONTAINERD_SOCK" >&2
  else
    log "deploy/local/images is missing: the real node has no images"
  fi
}

# ---------------------------------------------------------------------------------------------
# Stop: leave the machine as it was found.

node_recorded() { [[ -f "$NODE_DIR/sysctl.before" ]]; }

node_stop() {
  node_recorded || return 0
  stop_one kubelet
  sed -i '/^kubelet$/d' "$RUN/started" 2>/dev/null || true
  if alive containerd; then
    remove_all_containers
  fi
  stop_one containerd
  sed -i '/^containerd$/d' "$RUN/started" 2>/dev/null || true
  kill_leftover_shims
  unmount_under "$NODE_DIR" "$CONTAINERD_ROOT"
  remove_cgroups
  restore_machine_state
  rm -rf "$NODE_DIR/root" "$NODE_DIR/containerd-state"
  [[ "$(cat "$REAL_NODE_OWNER" 2>/dev/null)" == "$RUN" ]] && rm -f "$REAL_NODE_OWNER"
  rm -f "$NODE_DIR/sysctl.before"
  log "real node stopped; machine state restored"
}

remove_all_containers() {
  local id
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true
  done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      ctr_ tasks delete "$id" >/dev/null 2>&1 && break
      sleep 0.2
    done
  done
  for id in $(ctr_ containers ls -q 2>/dev/null); do
    ctr_ containers delete "$id" >/dev/null 2>&1 || true
  done
}

# Shims outlive containerd by design; ours are the ones whose -address is our socket.
kill_leftover_shims() {
  local pid cmdline
  for pid in $(pgrep -f containerd-shim 2>/dev/null); do
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
    [[ $cmdline == *"$CONTAINERD_SOCK"* ]] && kill -KILL "$pid" 2>/dev/null || true
  done
}

unmount_under() {
  local dir mnt
  for dir in "$@"; do
    # deepest first; lazily when busy, so that a stop never hangs on a mount
    while read -r mnt; do
      umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || log "could not unmount $mnt"
    done < <(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r -u)
  done
}

# kubelet's cgroupRoot must exist in every hierarchy; a v1 cpuset needs its cpus and mems set.
create_cgroups() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [[ -e "${hierarchy}cgroup.procs" ]] || continue
    mkdir -p "$hierarchy$REAL_NODE_CGROUP"
    if [[ -e "${hierarchy}cpuset.cpus" ]]; then
      cat "${hierarchy}cpuset.cpus" >"$hierarchy$REAL_NODE_CGROUP/cpuset.cpus"
      cat "${hierarchy}cpuset.mems" >"$hierarchy$REAL_NODE_CGROUP/cpuset.mems"
    fi
  done
}

remove_cgroups() {
  local hierarchy pid pids i
  # A container whose shim was killed (containerd died first) lives on, reparented: end what is left
  # in the node's cgroups before removing them.
  for ((i = 0; i < 25; i++)); do
    pids="$(find /sys/fs/cgroup/*/"$REAL_NODE_CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
    [[ -z $pids ]] && break
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.2
  done
  for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -d "$hierarchy$REAL_NODE_CGROUP" ]] || continue
    find "$hierarchy$REAL_NODE_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d "$hierarchy$REAL_NODE_CGROUP" ]] && log "could not remove cgroup $hierarchy$REAL_NODE_CGROUP"
  done
  return 0
}

restore_machine_state() {
  local line path
  while IFS= read -r line; do
    [[ -n $line ]] && sysctl -q -w "$line" >/dev/null 2>&1 || log "could not restore $line"
  done <"$NODE_DIR/sysctl.before"
  find /var/log/containers -maxdepth 1 -type l -lname "$NODE_DIR/*" -delete 2>/dev/null || true
  while IFS= read -r path; do
    [[ -n $path ]] && rm -rf "$path"
  done <"$NODE_DIR/created"
}

node_status() {
  if alive kubelet && alive containerd; then
    # shellcheck disable=SC1091
    source "$NODE_DIR/ports"
    printf '%-24s running  pid %-8s 127.0.0.1:%s (node %s)\n' kubelet "$(recorded_pid kubelet)" "$KUBELET_PORT" "$REAL_NODE_NAME"
    printf '%-24s running  pid %-8s %s\n' containerd "$(recorded_pid containerd)" "$CONTAINERD_SOCK"
    return 0
  fi
  printf '%-24s %s\n' "real node" "not running${1:+ ($1)}"
  return 3
}
