"""Which isolation Berth chooses from what an engine offers (`docker info`), without an
engine: the choice is pure logic, and its refusals are the operator's instructions. And the
firewall script, run twice at once in a network namespace of its own."""

from __future__ import annotations

import os

import pytest

from berth.config import Config
from berth.isolation import IsolationError, choose, egress_rules

USERNS_BTRFS = {"SecurityOptions": ["name=seccomp,profile=default", "name=userns"], "Driver": "btrfs",
                "Runtimes": {"runc": {}, "io.containerd.runc.v2": {}}}
PLAIN = {"SecurityOptions": ["name=seccomp,profile=default"], "Driver": "overlay2",
         "DriverStatus": [["Backing Filesystem", "extfs"]], "Runtimes": {"runc": {}}}


def config(**settings) -> Config:
    return Config.from_env({f"BERTH_{key.upper()}": value for key, value in settings.items()})


def test_a_user_namespace_with_a_bounded_disk_by_default():
    isolation = choose(USERNS_BTRFS, config())
    assert isolation.name == "userns" and not isolation.warning
    assert isolation.options["storage_opt"] == {"size": "10G"}
    assert "privileged" not in isolation.options and "device_cgroup_rules" not in isolation.options
    assert not isolation.engine_volume  # the engine's data is on the bounded root


def test_an_engine_without_user_namespaces_is_refused_not_weakened():
    with pytest.raises(IsolationError, match="userns-remap"):
        choose(PLAIN, config())
    with pytest.raises(IsolationError, match="userns-remap"):
        choose(PLAIN, config(isolation="userns"))


def test_the_weaker_profile_only_when_named_and_with_a_warning():
    isolation = choose(PLAIN, config(isolation="trusted"))
    assert isolation.name == "trusted" and "reach the host" in isolation.warning
    assert isolation.disk_bound == "loop" and isolation.engine_volume
    # on an engine that remaps users, the weaker profile opts out of the user namespace
    assert choose(USERNS_BTRFS, config(isolation="trusted")).options["userns_mode"] == "host"


def test_a_disk_bound_the_engine_cannot_keep_is_refused():
    userns_on_ext4 = {**PLAIN, "SecurityOptions": ["name=userns"]}
    with pytest.raises(IsolationError, match="BERTH_MACHINE_DISK"):
        choose(userns_on_ext4, config())
    unbounded = choose(userns_on_ext4, config(machine_disk=""))
    assert unbounded.name == "userns" and unbounded.engine_volume and "storage_opt" not in unbounded.options


def test_sysbox_where_the_engine_has_it():
    info = {**PLAIN, "Runtimes": {"runc": {}, "sysbox-runc": {}}}
    assert choose(info, config(machine_disk="")).options == {"runtime": "sysbox-runc"}
    with pytest.raises(IsolationError, match="sysbox-runc"):
        choose(USERNS_BTRFS, config(isolation="sysbox"))
    with pytest.raises(IsolationError, match="not one of"):
        choose(USERNS_BTRFS, config(isolation="strong"))


def test_egress_rules_allow_what_the_operator_names_and_keep_chains_per_pool():
    rules = egress_rules("10.213.0.0/16", ("10.40.0.0/24",))
    assert "BERTH-OUT-0AD50000-16" in rules and "BERTH-IN-0AD50000-16" in rules
    assert rules.index("10.40.0.0/24") < rules.index("169.254.0.0/16")  # allowed before blocked
    assert "hook DOCKER-USER" in rules and "hook INPUT" in rules


@pytest.mark.engine
def test_two_berths_applying_the_firewall_at_once_leave_it_whole(engine):
    """Two Berths starting together apply the firewall at the same moment. When each chain
    was flushed and refilled a command at a time, the two runs interleaved and left a chain
    that rejected the host's own connections to machines ahead of the rule that lets
    answers through. Here the script runs five times two at once, in a network namespace of
    the test's own (a container with no network), and the chains must end exactly as one
    run leaves them."""
    script = egress_rules("10.213.0.0/16", ("10.40.0.0/24",))
    harness = (
        'iptables -w -N DOCKER-USER\n'
        'printf "%s" "$1" > /tmp/rules.sh\n'
        'sh /tmp/rules.sh >/dev/null && iptables -S > /tmp/once\n'
        'for round in 1 2 3 4 5; do sh /tmp/rules.sh >/dev/null & sh /tmp/rules.sh >/dev/null & wait; done\n'
        'iptables -S > /tmp/twice\n'
        'echo ONCE; grep BERTH /tmp/once; echo TWICE; grep BERTH /tmp/twice\n'
    )
    container = engine.containers.create(
        Config.from_env(os.environ).machine_image, ["sh", "-c", harness, "harness", script], entrypoint=[],
        network_mode="none", userns_mode="host", cap_add=["NET_ADMIN", "NET_RAW"],
        labels={"berth.test": "firewall"})
    try:
        container.start()
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs().decode()
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    once, twice = output.split("TWICE")
    once_rules = [line for line in once.splitlines() if line.startswith("-A BERTH")]
    twice_rules = [line for line in twice.splitlines() if line.startswith("-A BERTH")]
    assert len(once_rules) > 10, output  # the script ran and made its chains
    assert twice_rules == once_rules, output
    assert "-A INPUT -j BERTH-IN-0AD50000-16" in twice and "-A DOCKER-USER -j BERTH-OUT-0AD50000-16" in twice
