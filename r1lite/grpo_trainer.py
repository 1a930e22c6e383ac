"""TRL's GRPOTrainer, plus what rollouts from a different sampler need: the log-prob gap and its correction.

    >>> trainer = GRPOTrainer(model=..., rollout_func=make_rollout_func(settings), is_cap=2.0, ...)
    >>> trainer.train()      # logs rollout/logprob_gap and rollout/is_clipped every step

Our rollout engine samples from a merged bf16 copy of the policy (or the 4-bit model under other
kernels), while TRL scores the NF4 + LoRA policy with fp32 norms: the two disagree a little on every
token. TRL corrects that mismatch only when vLLM generates; with `rollout_func` it throws the
sampler's log-probs away. Here, whenever the batch carries the sampler's log-probs
(`sampling_per_token_logps`), each token's loss is weighted by the truncated importance ratio
min(pi_train / pi_sampler, is_cap) (Yao et al., 2025, "truncated importance sampling"), exactly
where TRL applies its vLLM correction, and the mean absolute log-prob gap is logged.

Nothing is recomputed: the trainer's own log-probs come from the forward pass the loss already
does. With `num_iterations == 1` (our recipes) the policy that sampled is the one being scored, so
pi_train of that forward pass is the behaviour policy's probability under the trainer's kernels.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer as _TRLGRPOTrainer


class GRPOTrainer(_TRLGRPOTrainer):
    def __init__(self, *args: Any, is_cap: float = 2.0, **kwargs: Any) -> None:
        """`is_cap`: the truncation of the importance ratio; 0 turns the correction off (the gap is still logged)."""
        super().__init__(*args, **kwargs)
        self.is_cap = is_cap

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        """TRL's rewards (gathered over processes), plus r1lite's share of groups without reward variance."""
        from r1lite.diagnostics import groups_without_signal

        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)  # [B], as TRL sums them
        flat = groups_without_signal(rewards.tolist(), group)
        self._metrics[mode]["r1lite/groups_no_signal"].append(sum(flat) / max(len(flat), 1))
        return rewards_per_func

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        sampling = inputs.get("sampling_per_token_logps")
        if sampling is None or self.use_vllm:  # TRL generated (no sampler log-probs) or vLLM: TRL's own path
            return super()._compute_loss(model, inputs)
        score = self._get_per_token_logps_and_entropies

        def scored(*args: Any, **kwargs: Any) -> Any:
            # the policy forward inside TRL's loss: note the gap and set the ratio before TRL reads it
            logps, entropies, aux = score(*args, **kwargs)
            self._weigh(inputs, logps.detach(), sampling)
            return logps, entropies, aux

        self._get_per_token_logps_and_entropies = scored  # shadows the method for this call only
        correct = self.is_cap > 0
        # TRL multiplies the per-token loss by inputs["importance_sampling_ratio"] when these two are set
        self.use_vllm, saved = correct, self.vllm_importance_sampling_correction
        self.vllm_importance_sampling_correction = True
        try:
            return super()._compute_loss(model, inputs)
        finally:
            del self._get_per_token_logps_and_entropies
            self.use_vllm, self.vllm_importance_sampling_correction = False, saved

    def _weigh(self, inputs: dict[str, Any], train_logps: torch.Tensor, sampling: torch.Tensor) -> None:
        """Log |log pi_train - log pi_sampler| and store the truncated ratio for the loss."""
        mask = inputs["completion_mask"].bool()  # [B, T]
        behaviour = inputs.get("old_per_token_logps")
        behaviour = train_logps if behaviour is None else behaviour
        diff = torch.nan_to_num(behaviour - sampling, nan=0.0)  # [B, T]
        mode = "train" if self.model.training else "eval"
        gap = diff.abs()[mask].mean() if mask.any() else diff.new_zeros(())
        self._metrics[mode]["rollout/logprob_gap"].append(self.accelerator.gather(gap).mean().item())
        if self.is_cap > 0:
            ratio = torch.exp(diff)
            clipped = (ratio > self.is_cap)[mask].float().mean() if mask.any() else diff.new_zeros(())
            self._metrics[mode]["rollout/is_clipped"].append(self.accelerator.gather(clipped).mean().item())
            inputs["importance_sampling_ratio"] = ratio.clamp(max=self.is_cap)
