"""The spool: discovery and identity of files, offsets, checkpoints,
quarantine and replay, the quota, and the janitor that removes what every
sink has passed (holding a disabled sink's backlog)."""
