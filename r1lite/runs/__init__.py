"""A run while it runs: its directory (`rundir.Run`), stopping and resuming, failures as one line, W&B, the Hub."""
