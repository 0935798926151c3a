"""The package cache: one apt-cacher-ng per Berth, on every session's network as
`berth-packages`, so that a class's `apt-get install nginx` in nested containers fetches
each package from Debian once (docs/security.md, "The package cache").

The learner is root in their machine and may send the cache anything. What keeps it from
becoming a way around the machines' firewall:
- its configuration (packages/acng.conf): Debian's archive only, always fetched from
  deb.debian.org; any other URL, CONNECT tunnels and the report pages are refused (403);
- its own way out is a network in the sessions' address pool, so the firewall on the
  engine's host (isolation.egress_rules) holds for the cache as for a machine: should it
  ever be made to connect elsewhere, the host, the LAN and private ranges stay shut;
- it never routes between the session networks it sits on (ip_forward=0), like the mirror;
- it runs with every capability dropped, and its disk is bounded where the engine can.

It lives as long as its Berth: it is labelled with the instance, so stopping Berth and
`./run clean` remove it, and its cache with it (no volume outlives a run)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import docker
import docker.errors
import requests.exceptions

from .config import Config
from .images import adopt, network_named
from .isolation import root_size_bounded
from .owner import owner_labels

log = logging.getLogger(__name__)

PACKAGES_ALIAS = "berth-packages"
PACKAGES_PORT = 3142


class PackageCache:
    """The package cache of one Berth. `network` makes its own network (a bridge with a
    subnet of the sessions' pool, so the firewall covers its traffic): the backend's."""

    def __init__(self, client: docker.DockerClient, config: Config, instance_id: str,
                 network: Callable[[str], object]):
        self.client = client
        self.config = config
        self.instance_id = instance_id
        # "berth--": sorts before every session network's name ("berth-" and hex), and the
        # engine gives a container the default route of its first network by name: so the
        # cache's way out stays its own network while sessions come and go.
        self.name = f"berth--packages-{instance_id}"
        self.labels = {"berth.instance": instance_id, "berth.role": "packages", **owner_labels(config.data_dir)}
        self._network = network
        self.status = "starting"
        self.message = ""
        self.bounded = False
        self.container_id: str | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{PACKAGES_ALIAS}:{PACKAGES_PORT}"

    def start(self) -> str | None:
        """Run the cache (or find the one an earlier start of this Berth left); returns its
        container id, None when it could not start (the machines then reach Debian directly)."""
        with self._lock:
            try:
                self.container_id = self._run()
                self.status, self.message = "ready", ""
            except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
                self.status = "failed"
                self.message = f"the package cache is not working: {str(error)[:300]}"
                log.error("%s", self.message)
            return self.container_id

    def _run(self) -> str:
        container = adopt(self.client, self.name)
        if container:
            self.bounded = bool((container.attrs.get("HostConfig") or {}).get("StorageOpt"))
            return container.id
        network = network_named(self.client, self.name, self._network)
        options: dict = {}
        size = self.config.package_cache_size
        if size and root_size_bounded(self.client.info()):
            options["storage_opt"] = {"size": size.upper().removesuffix("B")}
            self.bounded = True
        elif size:
            log.warning("this engine cannot bound a container's disk: the package cache's disk "
                        "is bounded only by the engine's (BERTH_PACKAGE_CACHE_SIZE=%s not applied)", size)
        container = self.client.containers.run(
            self.config.package_cache_image, name=self.name, detach=True, labels=self.labels,
            network=network.name,  # type: ignore[attr-defined]
            # it sits on every session's network: it must never route between them
            sysctls={"net.ipv4.ip_forward": "0"},
            cap_drop=["ALL"], security_opt=["no-new-privileges"],
            restart_policy={"Name": "unless-stopped"}, mem_limit="256m", pids_limit=300,
            **options,
        )
        log.info("package cache %s runs (%s)", self.name,
                 f"disk bounded to {size}" if self.bounded else "disk unbounded")
        return container.id
