"""mitmproxy entry point: `mitmdump -s addons/geogate_addon.py`.

Only this file is loaded as a script (and reloaded when it changes); the logic lives in the
`geogate` package, so a half-saved edit of it can never unload the checks.

The module itself is the addon: its hooks are those of one GeoGate (see GeoGate.serve_from).
"""

import os
import sys

try:
    import geogate  # noqa: F401
except ImportError:  # a checkout that was never installed: use the package beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from geogate.proxy import GeoGate  # noqa: E402

GeoGate().serve_from(globals())
