"""The `geogate` command: `main` parses and dispatches; one module per larger subcommand."""
