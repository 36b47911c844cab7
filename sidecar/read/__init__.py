"""The read side: the table read back (repository), the statistics cache,
and the stats service the CLI and the HTTP server share."""
