"""r1lite's rollout engine: shared prefill, a static KV cache, a captured decode step, LoRA merged for decoding.

sampling (the next token), merged (the dense working copy), attention (what a decode step computes), capture (a
CUDA graph that proves itself), engine (one rollout), registry (engines live on their model). The GRPO stage's
TRL glue is r1lite.stages.grpo_rollout.
"""
