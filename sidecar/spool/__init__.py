"""The spool: discovery and identity of files, offsets, checkpoints, quarantine."""
