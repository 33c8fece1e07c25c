"""`geogate audit`: recorded traffic (mitmproxy flow files, HAR) judged by the one decision engine.

Data moves one way through small modules:
  flowfile, harstream  bytes -> flow states / HAR entries, streamed (I/O)
  readers              files -> RecordedFlow or Problem, with file positions (I/O)
  extract              flow state / HAR entry -> RecordedFlow (pure)
  evaluate             RecordedFlow -> addresses -> GateState.decide (pure, but for --resolve)
  aggregate            decisions -> per destination, country, rule; --against changes (pure)
  run                  the loop shared by the CLI and the replay addon
  text/json/csv/html_report, progress, command   output and the `geogate audit` command
  replay               ReplayAudit, for `mitmdump -nr FILE -s addons/geogate_addon.py`
"""
