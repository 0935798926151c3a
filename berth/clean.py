"""`./run clean` (`python -m berth.clean [INSTANCE ...]`): remove what Berths that no longer
run left on the engine (a Berth killed with SIGKILL, a crashed test run), and say what.

Which Berth is running (owner.py): one that holds the lock of its data folder. A Berth's
things carry its data folder and host, so on the host where it ran this tells for sure;
things whose Berth this host cannot judge (made on another host, by a Berth in a
container, or before Berth labelled its data folder) are kept and listed, and removed
only when named. A named instance is removed unless its Berth is seen running."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .certs import CertificateAuthority
from .config import Config, ConfigError
from .machines import MachineBackend, MachineError
from .owner import LABEL_DATA, still_running
from .root import backend_class


def clean(backend: MachineBackend, named: list[str] | None = None, say=print) -> list[str]:
    """Remove the leftovers of Berths that do not run (or of the `named` instances);
    returns the ids of the instances removed."""
    found = backend.instances()
    removed = []
    for instance_id in named or sorted(found):
        leftovers = found.get(instance_id)
        if leftovers is None:
            say(f"{instance_id}: nothing on the engine")
            continue
        running = still_running(leftovers.labels)
        folder = leftovers.labels.get(LABEL_DATA, "?")
        if running:
            say(f"{instance_id}: kept, its Berth is running (data folder {folder})")
            continue
        if running is None and not named:
            say(f"{instance_id}: kept, this host cannot tell whether its Berth runs "
                f"({len(leftovers.names)} thing(s); `./run clean {instance_id}` removes them)")
            continue
        names = backend.remove_all(instance_id)
        removed.append(instance_id)
        say(f"{instance_id}: removed {len(names)} thing(s): {', '.join(sorted(names)) or '-'}")
    if not named:
        shared = backend.remove_unused_shared()
        if shared:
            say(f"removed what no running Berth uses: {', '.join(sorted(shared))}")
    if not found and not named:
        say("nothing of Berth's is on the engine")
    return removed


def main(argv: list[str]) -> int:
    try:
        config = Config.from_env()
    except ConfigError as error:
        print(f"berth: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:  # no Berth of its own: no certificates kept
        try:
            backend = backend_class(config.machines)(config, "", CertificateAuthority(Path(scratch)))
            clean(backend, argv, say=lambda line: print(f"berth clean: {line}", flush=True))
        except MachineError as error:
            print(f"berth clean: {error.message}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
