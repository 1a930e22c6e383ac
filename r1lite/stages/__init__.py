"""Pipeline stages, one module each, each with a `run(...)` entry point: data, sft, grpo, eval."""
