"""One-shot commands that read and print: stats, trace, retention, status
and ``check-config --connect``. ``sidecar/cli.py`` parses and dispatches."""
