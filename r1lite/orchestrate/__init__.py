"""What runs the stages: one run's pipeline (data -> evals -> SFT -> GRPO) and sweeps of many runs."""
