"""How learner machines are kept from the host and from each other (docs/security.md).

The learner is root in their machine and untrusted. What stops that root is chosen here
from what the engine offers, strongest first, and never weakened silently:

- `sysbox`: the engine has the sysbox-runc runtime (a user namespace per machine, and
  procfs and sysfs virtualised). Supported, not tested on Berth's own hosts (not packaged
  for Debian).
- `userns`: the engine remaps users (`userns-remap`), so root in a machine is an
  unprivileged user on the host; the capabilities a machine's own engine needs hold only
  inside its namespaces. The default: `./run` starts such an engine.
- `trusted`: machines share the host's user namespace with SYS_ADMIN. Root in a machine can
  reach the host kernel. Only when the operator names it (a single-user laptop), with a
  warning at start-up, in /healthz and on the page.

Besides, a firewall on the engine's host (egress_rules) keeps machines from the host's own
services and from the networks around it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .config import Config

CHOICES = ("sysbox", "userns", "trusted")

# Ranges a machine never reaches unless BERTH_ALLOWED_NETWORKS names them: private and
# shared address space (the site's LAN, the host's other containers), link-local (cloud
# metadata services), loopback, multicast and reserved space.
BLOCKED_NETWORKS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
)


class IsolationError(ValueError):
    """The engine cannot isolate machines the way the settings ask; the message says what
    the operator can do."""


@dataclass(frozen=True)
class Isolation:
    """One way of running machines: what /healthz and the page report, and the container
    options the backend applies."""

    name: str
    summary: str
    options: dict = field(default_factory=dict)
    # how the machine's disk is bounded: "root" (the engine bounds the machine's root file
    # system, its engine's data on it), "loop" (the machine makes its own loop disk), "" none
    disk_bound: str = ""
    warning: str = ""

    @property
    def engine_volume(self) -> bool:
        """Whether the machine's engine keeps its data on a volume of its own (overlay2
        cannot sit on the overlay root of a machine whose root file system is not bounded)."""
        return self.disk_bound != "root"


def _engine_has_userns(info: dict) -> bool:
    return any("name=userns" in option for option in info.get("SecurityOptions") or [])


def root_size_bounded(info: dict) -> bool:
    """Engines that bound a container's root file system (`--storage-opt size`)."""
    driver = info.get("Driver", "")
    backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem", "")
    return driver == "btrfs" or (driver in ("overlay2", "overlay") and backing == "xfs")


def choose(info: dict, config: Config) -> Isolation:
    """The isolation for machines on an engine that answered `docker info` with `info`."""
    runtimes = info.get("Runtimes") or {}
    wanted = config.isolation
    runtime = config.machine_runtime
    if wanted and wanted not in CHOICES:
        raise IsolationError(f"BERTH_ISOLATION={wanted} is not one of {', '.join(CHOICES)}.")
    if runtime and runtime not in runtimes:
        raise IsolationError(f"BERTH_MACHINE_RUNTIME={runtime} is not a runtime of this engine "
                             f"(it has: {', '.join(sorted(runtimes))}).")
    if not wanted:
        wanted = "sysbox" if (runtime or "sysbox-runc") == "sysbox-runc" and "sysbox-runc" in runtimes else "userns"
    disk = config.machine_disk

    if wanted == "trusted":
        options = {
            # An engine needs to mount (SYS_ADMIN) and to set up networks and iptables
            # (NET_ADMIN); runc inside needs keyctl, which Docker's default seccomp
            # profile refuses; the loop device gives the engine a disk of bounded size.
            "cap_add": ["SYS_ADMIN", "NET_ADMIN"],
            "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
            "systempaths_unconfined": True,
            "device_cgroup_rules": ["b 7:* rwm", "c 10:237 rwm"],
            "cgroupns": "private",
            **({"runtime": runtime} if runtime else {}),
            # on an engine that remaps users, this profile opts out of it, by name
            **({"userns_mode": "host"} if _engine_has_userns(info) else {}),
        }
        return Isolation("trusted", f"{runtime or 'runc'} in the host's user namespace with SYS_ADMIN "
                         "(BERTH_ISOLATION=trusted)", options, "loop" if disk else "",
                         "Machines run without a user namespace (BERTH_ISOLATION=trusted): root in a "
                         "machine can reach the host's kernel and other machines' disks. Use this only "
                         "where every learner is trusted, such as your own laptop.")

    if wanted == "sysbox":
        if "sysbox-runc" not in runtimes:
            raise IsolationError("BERTH_ISOLATION=sysbox, but this engine has no sysbox-runc runtime.")
        options = {"runtime": "sysbox-runc"}
        bound = _bound_root(info, disk, options)
        return Isolation("sysbox", "sysbox-runc: a user namespace per machine", options, bound)

    if not _engine_has_userns(info):
        raise IsolationError(
            "This Docker engine runs containers as the host's own root (it does not remap users), "
            "so a learner who is root in a machine could reach the host. Let ./run start Berth's "
            "engine (scripts/engine.sh does, when no engine runs), or set \"userns-remap\": "
            "\"default\" in this engine's daemon.json and restart it. On a single-user laptop, "
            "BERTH_ISOLATION=trusted runs machines without that protection.")
    options = {
        # These capabilities hold in the machine's own user namespace only: enough for its
        # engine to mount and to set up its networks, nothing on the host. Seccomp stays
        # off because nested runc needs keyctl and mount; /proc/sys is writable because
        # the engine sets its own network namespace's sysctls there (the host's own are
        # owned by the host's root, and stay read-only to the machine).
        "cap_add": ["SYS_ADMIN", "NET_ADMIN"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "systempaths_unconfined": True,
        "cgroupns": "private",
        **({"runtime": runtime} if runtime else {}),
    }
    bound = _bound_root(info, disk, options)
    return Isolation("userns", "a user namespace (the engine remaps users): root in a machine is "
                     "not root on the host", options, bound)


def _bound_root(info: dict, disk: str, options: dict) -> str:
    """Bound the machine's root file system (and so everything it stores) to `disk`."""
    if not disk:
        return ""
    if not root_size_bounded(info):
        raise IsolationError(
            f"BERTH_MACHINE_DISK={disk}, but this engine cannot bound a container's disk (its storage "
            f"driver is {info.get('Driver', '?')}; btrfs, or overlay2 on xfs with project quotas, can). "
            "Let ./run start Berth's engine, which can, or set BERTH_MACHINE_DISK= (empty) to run "
            "machines without a disk bound.")
    options["storage_opt"] = {"size": disk.upper().removesuffix("B")}
    return "root"


def egress_rules(pool: str, allowed: tuple[str, ...]) -> str:
    """A shell script (run on the engine's host, in its network namespace) that keeps
    machines of the address pool `pool` from the host and the networks around it, and lets
    them reach each other (the engine's own rules keep sessions apart), the host's DNS
    resolvers, the ranges the operator allowed, and public addresses.

    Idempotent, and safe to run twice at once (two Berths starting together): both chains
    are replaced in one iptables-restore commit, so no run ever sees or leaves a chain half
    written. Each run is its own container, so iptables' own lock (`-w`) does not order
    them; the single commit does."""
    network = ipaddress.ip_network(pool)  # validated by config; nothing else reaches a shell
    for each in allowed:
        ipaddress.ip_network(each)
    blocked = " ".join(BLOCKED_NETWORKS)
    allow = " ".join(allowed)
    # chains of this pool's own, so that Berths with other pools keep theirs
    tag = f"{int(network.network_address):08X}-{network.prefixlen}"
    return f"""set -eu
pool={pool}
rules() {{
echo '*filter'
# declaring a chain in a --noflush restore empties it, in the same commit as its new rules
echo ':BERTH-IN-{tag} - [0:0]'
echo ':BERTH-OUT-{tag} - [0:0]'
# the host itself (its services, Berth, the engine's API): only answers to what it began
echo "-A BERTH-IN-{tag} -s $pool -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
echo "-A BERTH-IN-{tag} -s $pool -p tcp -j REJECT --reject-with tcp-reset"
echo "-A BERTH-IN-{tag} -s $pool -j REJECT --reject-with icmp-port-unreachable"
# everything forwarded from a machine
echo "-A BERTH-OUT-{tag} -s $pool -d $pool -j RETURN"
echo "-A BERTH-OUT-{tag} ! -s $pool -j RETURN"
echo "-A BERTH-OUT-{tag} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
for resolver in $(awk '/^nameserver/ {{ print $2 }}' /etc/resolv.conf | grep -v ':' || true); do
  echo "-A BERTH-OUT-{tag} -d $resolver -p udp --dport 53 -j RETURN"
  echo "-A BERTH-OUT-{tag} -d $resolver -p tcp --dport 53 -j RETURN"
done
for network in {allow}; do echo "-A BERTH-OUT-{tag} -d $network -j RETURN"; done
# the networks the host is on (its LAN), whatever their range
for network in $(ip -4 route show scope link | awk '{{ print $1 }}'); do
  echo "-A BERTH-OUT-{tag} -d $network -j REJECT --reject-with icmp-net-prohibited"
done
for network in {blocked}; do
  echo "-A BERTH-OUT-{tag} -d $network -j REJECT --reject-with icmp-net-prohibited"
done
echo COMMIT
}}
rules | iptables-restore -w --noflush
# the jumps into the chains; two runs at once may both add one, and a second jump into a
# chain that only returns or rejects changes nothing
hook() {{ iptables -w -C "$1" -j "$2" 2>/dev/null || iptables -w -I "$1" 1 -j "$2"; }}
hook INPUT BERTH-IN-{tag}
hook DOCKER-USER BERTH-OUT-{tag}
echo applied
"""
