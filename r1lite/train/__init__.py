"""What the stages train and decode with: models (4-bit, LoRA), the rollout engine, the GRPO trainer, diagnostics."""
