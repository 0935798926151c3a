"""Which isolation Berth chooses from what an engine offers (`docker info`), without an
engine: the choice is pure logic, and its refusals are the operator's instructions."""

from __future__ import annotations

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
