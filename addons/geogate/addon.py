"""The mitmproxy entry point: `mitmdump -s "$(geogate addon-path)"`.

mitmproxy loads this file as a script (and reloads it when it changes); the logic lives in the
package, so a half-saved edit here can never unload the checks. The script module itself is the
addon: its hooks are those of one GeoGate (see GeoGate.serve_from), given the audit of flows read
from a file (`mitmdump -nr FILE`). This is the one module that puts the proxy and the audit
together, as the `geogate` command is for the command line.

`python -m geogate.addon` prints the path of this file; importing it does nothing but define serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve()


def serve(namespace: dict[str, Any]) -> None:
    """Make the script module whose globals are `namespace` the geogate addon."""
    from geogate.audit.replay import ReplayAudit
    from geogate.proxy.addon import GeoGate

    GeoGate(replay=ReplayAudit).serve_from(namespace)


if __name__ == "__main__":
    print(PATH)
elif __name__.startswith("__mitmproxy_script__"):
    serve(globals())
