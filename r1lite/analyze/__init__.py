"""Numbers about finished runs: reports of a run and of a sweep, cost, the environment a run ran in."""
