"""mitmproxy entry point from a checkout: `mitmdump -s addons/geogate_addon.py` (see geogate/addon.py)."""
from geogate.addon import serve

serve(globals())
