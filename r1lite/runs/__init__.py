"""Runs: the run directory (`rundir.Run`), the pipeline that fills it, resuming, signals, processes, sweeps."""
