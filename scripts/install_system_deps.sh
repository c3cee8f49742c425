#!/usr/bin/env bash
# Install the system packages didact's tests and benchmarks need (Debian/Ubuntu, as root).
#
#   prometheus               real Prometheus server + promtool (source tests, benchmark)
#   prometheus-node-exporter real node exporter (source tests)
#   stress-ng                CPU load for the node-exporter test and power demos
#   chromium                 headless browser for dashboard screenshots
#   slurmctld slurmd munge   a real single-node Slurm (22.05) for the Slurm executor tests
#   slurm-client             sbatch / squeue / scontrol / scancel
#   postgresql               a real PostgreSQL 15 for the Dagster-on-Postgres tests
#
# Idempotent: packages already installed are skipped, `apt-get update` runs only when
# something must be installed and the package lists are missing or older than a day.
# Quiet: prints one line per action; apt's chatter goes to a log file shown on failure.
set -euo pipefail

PACKAGES=(prometheus prometheus-node-exporter stress-ng chromium openmpi-bin libopenmpi-dev
          slurmctld slurmd munge slurm-client postgresql)

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
    command -v sudo >/dev/null 2>&1 || { echo "install_system_deps: run as root (or install sudo)" >&2; exit 1; }
else
    SUDO=
fi
command -v apt-get >/dev/null 2>&1 || { echo "install_system_deps: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        :
    else
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_deps: all present (${PACKAGES[*]})"
    exit 0
fi

log=$(mktemp -t didact-apt.XXXXXX.log)
trap 'rm -f "$log"' EXIT
run() {
    if ! "$@" >>"$log" 2>&1; then
        echo "install_system_deps: failed: $*" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

export DEBIAN_FRONTEND=noninteractive
# update only if the lists are absent or stale (> 1 day) — a clean image has none
lists=/var/lib/apt/lists
updated=0
if [ -z "$(find "$lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null)" ]; then
    echo "install_system_deps: apt-get update"
    run $SUDO apt-get update -q
    updated=1
fi
echo "install_system_deps: installing ${missing[*]}"
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    # fresh-looking lists can still point at superseded .debs: refresh once and retry
    [ "$updated" = 1 ] && { echo "install_system_deps: install failed" >&2; tail -n 40 "$log" >&2; exit 1; }
    echo "install_system_deps: install failed, apt-get update and retry"
    run $SUDO apt-get update -q
    run $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian starts the services on install where an init system runs; tests start their own
# instances on free ports, so a system copy is harmless, but say where they come from.
for bin in /usr/bin/prometheus /usr/bin/promtool /usr/bin/prometheus-node-exporter \
           /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/sbatch /usr/bin/scontrol; do
    [ -x "$bin" ] || { echo "install_system_deps: $bin missing after install" >&2; exit 1; }
done
echo "install_system_deps: done"
