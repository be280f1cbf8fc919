"""The snapshotter: follows every journal read-only with shadow books and writes checkpoints."""
