"""TRL's GRPOTrainer, plus: the log-prob gap of rollouts from a different sampler and its correction, r1lite's
own count of groups without reward variance, DAPO's dynamic sampling, and a matched reward control arm.

    >>> trainer = GRPOTrainer(model=..., rollout_func=make_rollout_func(settings), is_cap=2.0, ...)
    >>> trainer.train()      # logs rollout/logprob_gap and rollout/is_clipped every step
    >>> GRPOTrainer(..., dynamic_sampling_rounds=4)   # up to 4 extra draws per step to fill it with signal
    >>> GRPOTrainer(..., reward_control="shuffle")    # the control: each group's rewards permuted within it

The control arm answers "did the reward do it?": small models gain from random or shuffled rewards
surprisingly often (Shao et al., 2025, "Spurious Rewards"), through sharpening and the clipping bias
alone. The control permutes each group's rewards among that group's own completions: every group keeps its
multiset of rewards, hence its advantages, its no-signal status and dynamic sampling's choice of it; only which
completion earned which is gone. A gain of the real arm over this control is the information the reward carried.

Our rollout engine samples from a merged 16-bit copy of the policy (or the 4-bit model under other
kernels), while TRL scores the NF4 + LoRA policy with fp32 norms: the two disagree a little on every
token. TRL corrects that mismatch only when vLLM generates; with `rollout_func` it throws the
sampler's log-probs away. Here, whenever the batch carries the sampler's log-probs
(`sampling_per_token_logps`), each token's loss is weighted by the truncated importance ratio
min(pi_train / pi_sampler, is_cap) (Yao et al., 2025, "truncated importance sampling"), exactly
where TRL applies its vLLM correction, and the mean absolute log-prob gap is logged.

Nothing is recomputed: the trainer's own log-probs come from the forward pass the loss already
does. With `num_iterations == 1` the policy that sampled is the one being scored, so pi_train of that
forward pass is the behaviour policy's probability under the trainer's kernels.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from trl import GRPOTrainer as _TRLGRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from r1lite.train.diagnostics import groups_without_signal


def shuffle_rewards(rewards_per_func: torch.Tensor, group: int, seed: int) -> torch.Tensor:
    """The rows (completions) of a [B, F] reward tensor permuted within each run of `group` rows (one prompt's
    completions, as TRL lays a batch out), seeded: every completion gets a groupmate's rewards, all reward functions
    together, so each group keeps its multiset of rewards and only which completion earned which is lost.

        >>> shuffle_rewards(torch.tensor([[1.], [0.], [0.], [5.], [5.], [6.]]), group=3, seed=0).flatten()
        tensor([0., 1., 0., 5., 6., 5.])        # {1, 0, 0} and {5, 5, 6} stay in their groups
    """
    generator = torch.Generator().manual_seed(seed)
    rows = rewards_per_func.shape[0]
    order = torch.cat([start + torch.randperm(group, generator=generator) for start in range(0, rows, group)])
    return rewards_per_func[order.to(rewards_per_func.device)]


class GRPOTrainer(_TRLGRPOTrainer):
    def __init__(
        self,
        *args: Any,
        is_cap: float = 2.0,
        dynamic_sampling_rounds: int = 0,
        reward_control: str = "none",
        **kwargs: Any,
    ) -> None:
        """`is_cap`: the truncation of the importance ratio; 0 turns the correction off (the gap is still logged).

        `dynamic_sampling_rounds`: with more than 0, groups whose completions all score alike are replaced by
        groups of freshly drawn prompts, up to that many extra generation rounds per step (DAPO's dynamic
        sampling); the batch keeps its size whatever happens.

        `reward_control`: "shuffle" trains on each scored batch's rewards permuted within each group.
        """
        super().__init__(*args, **kwargs)
        self.is_cap = is_cap
        self.dynamic_rounds = dynamic_sampling_rounds
        self.reward_control = reward_control
        self._signal: list[bool] = []  # per local group of the last scored batch: its rewards vary
        self._rewards: torch.Tensor | None = None  # the last scored batch's [B, F] rewards, as the arm trains on them
        self._scored: tuple[int, int] = (-1, 0)  # (step, batches scored in it): seeds the control's permutation

    def _control_seed(self) -> int:
        """A seed per scored batch: the same on every process (they hold the same gathered rewards) and after a
        resume (it depends on the step and on how many batches the step scored before, nothing else)."""
        step, count = self._scored
        self._scored = (self.state.global_step, count + 1 if step == self.state.global_step else 0)
        return self.args.seed * 1_000_003 + self.state.global_step * 1_009 + self._scored[1]

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> torch.Tensor:
        """TRL's rewards (gathered over processes), permuted within each group in the control arm, plus r1lite's share
        of groups without reward variance, computed from the rewards the arm trains on."""
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        if self.reward_control == "shuffle" and mode == "train":
            rewards_per_func = shuffle_rewards(rewards_per_func, group, self._control_seed())
        self._rewards = rewards_per_func
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)  # [B], as TRL sums them
        flat = groups_without_signal(rewards.tolist(), group)
        self._metrics[mode]["r1lite/groups_no_signal"].append(sum(flat) / max(len(flat), 1))
        local = len(prompts) // group  # this process's groups within the gathered batch
        start = self.accelerator.process_index * local
        self._signal = [not flat_ for flat_ in flat[start : start + local]]
        return rewards_per_func

    # -- dynamic sampling (DAPO, arXiv 2503.14476, section 3.2) -----------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if not self.dynamic_rounds or not self.model.training:
            return super()._generate_and_score_completions(inputs)
        return self._dynamic_batch(inputs)

    def _dynamic_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """The step's batch, filled with groups whose rewards vary: generate, keep those, draw more prompts.

        Each round generates as many prompts as the step has (the engine reuses its buffers), scores them
        with TRL's own code (advantages within each group, as without dynamic sampling), and keeps each
        completion with the example it was scored against. After `dynamic_rounds` extra rounds, groups
        without signal fill what is left: their advantages are zero, so they add no gradient, and the
        batch, the loss normalisation and the number of optimizer steps stay as configured. The old policy's
        log-probs a batch serving several updates needs (TRL's num_iterations) are computed once, for the groups
        kept, not in every round for groups thrown away.
        """
        group = self.num_generations
        want = len(inputs) // group
        before = {key: len(values) for key, values in self._metrics["train"].items()}
        outputs: list[dict[str, Any]] = []
        rewards: list[torch.Tensor] = []  # per round: this process's [groups x G, F] rewards, as trained on
        signal: list[tuple[int, int]] = []  # (round, group) of groups with reward variance
        spare: list[tuple[int, int]] = []
        batch, iterations = inputs, self.num_iterations
        self.num_iterations = 1  # TRL then skips the old log-probs in each round (computed below, once)
        try:
            for round_ in range(self.dynamic_rounds + 1):
                outputs.append(super()._generate_and_score_completions(batch))
                rewards.append(self._local_rows(self._rewards, want * group))
                for g, varies in enumerate(self._signal):
                    (signal if varies else spare).append((round_, g))
                if round_ == self.dynamic_rounds or not self._any_process(len(signal) < want):
                    break
                batch = self._draw_prompts(want, round_)
        finally:
            self.num_iterations = iterations
        chosen = (signal + spare)[:want]
        kept = torch.cat([rewards[r][g * group : (g + 1) * group] for r, g in chosen])
        self._log_kept(before, self.accelerator.gather(kept), group)
        drawn = len(outputs) * want
        self._metrics["train"]["r1lite/dynamic_sampling/kept"].append(min(len(signal), want) / drawn)
        self._metrics["train"]["r1lite/dynamic_sampling/discarded"].append(float(drawn - want))
        self._metrics["train"]["r1lite/dynamic_sampling/rounds"].append(float(len(outputs)))
        merged = self._merge_groups(outputs, chosen, group)
        if self.args.gradient_accumulation_steps % (self.args.steps_per_generation * self.num_iterations):
            merged["old_per_token_logps"] = self._old_logps(merged)  # as TRL computes them, for the kept rows
        return merged

    def _old_logps(self, batch: dict[str, Any]) -> torch.Tensor:
        """The policy's log-probs of the batch's completions now, before the updates it serves (TRL's
        old_per_token_logps): what the clipped ratio of the second and later updates compares against."""
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, ids, mask, batch["completion_ids"].size(1), self.args.per_device_train_batch_size
            )
        return logps

    def _local_rows(self, gathered: torch.Tensor, rows: int) -> torch.Tensor:
        """This process's rows of a batch gathered over processes (each holds `rows` of them, in process order)."""
        start = self.accelerator.process_index * rows
        return gathered[start : start + rows]

    def _log_kept(self, before: dict[str, int], kept: torch.Tensor, group: int) -> None:
        """The step's reward metrics from the groups it trains on, not from every round drawn: TRL logged each
        round's; those entries are replaced by one computed over `kept` ([kept groups x G, F], all processes)."""
        weights = self.reward_weights.to(kept.device)
        total = (kept * weights.unsqueeze(0)).nansum(dim=1)  # [N], as TRL sums them
        flat = groups_without_signal(total.tolist(), group)
        values = {
            "reward": total.mean().item(),
            "reward_std": total.std().item() if total.numel() > 1 else 0.0,
            "frac_reward_zero_std": (total.view(-1, group).std(dim=1) < 1e-8).float().mean().item(),
            "r1lite/groups_no_signal": sum(flat) / max(len(flat), 1),
        }
        for i, name in enumerate(self.reward_func_names):
            column = kept[:, i][~torch.isnan(kept[:, i])]
            values[f"rewards/{name}/mean"] = column.mean().item() if column.numel() else float("nan")
            values[f"rewards/{name}/std"] = column.std().item() if column.numel() > 1 else 0.0
        metrics = self._metrics["train"]
        for key, value in values.items():
            del metrics[key][before.get(key, 0) :]
            metrics[key].append(value)

    def _any_process(self, flag: bool) -> bool:
        """True when `flag` holds on any process: every process must generate the same number of rounds."""
        if self.accelerator.num_processes == 1:
            return flag
        return bool(self.accelerator.gather(torch.tensor([float(flag)], device=self.accelerator.device)).max() > 0)

    def _draw_prompts(self, prompts: int, round_: int) -> list[dict[str, Any]]:
        """`prompts` training prompts drawn afresh (seeded by seed, step, round and process), each G times."""
        rng = random.Random(f"{self.args.seed}-{self.state.global_step}-{round_}-{self.accelerator.process_index}")
        rows = rng.sample(range(len(self.train_dataset)), min(prompts, len(self.train_dataset)))
        return [self.train_dataset[i] for i in rows for _ in range(self.num_generations)]

    def _merge_groups(self, outputs: list[dict[str, Any]], chosen: list[tuple[int, int]], group: int) -> dict[str, Any]:
        """One batch of the chosen groups' rows from several scored batches (prompts left-padded, the rest right)."""
        pad = getattr(self.processing_class, "pad_token_id", None) or 0
        first, rows = outputs[0], len(outputs[0]["completion_ids"])
        merged: dict[str, Any] = {}
        for key, value in first.items():
            if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows):
                merged[key] = value
                continue
            parts = [outputs[r][key][g * group : (g + 1) * group] for r, g in chosen]
            merged[key] = _cat_padded(parts, left=key.startswith("prompt"), value=pad if key.endswith("_ids") else 0)
        loss_mask = merged["completion_mask"] * merged.get("tool_mask", 1)
        merged["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()  # as TRL counts it
        return merged

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **extra: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """TRL's fused LM head where it has a kernel for it (CUDA); a plain head over the completion elsewhere.

        Off CUDA, TRL's fused head runs a torch fallback that projects every position, prompt included,
        through the LM head in tiles: on 2 CPU cores it took more than half of a GRPO micro-step
        (SmolLM2-135M, 8 x (67 + 96) tokens: 4.9 of 9.2 s). Transformers' own head with
        `logits_to_keep` scores only the completion; the log-probs are the same (temperature-scaled).
        """
        vision = any(v is not None for v in extra.values())
        plain = input_ids.device.type != "cuda" and not compute_aux_loss and not vision
        if not plain or _softcapped(self.accelerator.unwrap_model(model)):  # DDP wraps the model on CPU too
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra
            )
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            with self.accelerator.autocast():
                out = model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1, use_cache=False)
            logits = out.logits[:, :-1, :].float() / self.temperature  # [b, T, V]: position t predicts token t+1
            log_softmax = torch.log_softmax(logits, dim=-1)
            padding = mask[:, -logits_to_keep:] == 0  # [b, T]: TRL's head gives 0 there, so does this one
            chosen = log_softmax.gather(-1, ids[:, -logits_to_keep:, None]).squeeze(-1)  # [b, T]
            logps.append(chosen.masked_fill(padding, 0.0))
            if compute_entropy:
                with torch.no_grad():
                    entropies.append((-(log_softmax.exp() * log_softmax).sum(-1)).masked_fill(padding, 0.0))
            del logits, log_softmax
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

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


def _cat_padded(parts: list[torch.Tensor], left: bool, value: float) -> torch.Tensor:
    """Concatenate along the batch, padding the last dimension of 2-D parts to the widest (on the left for prompts)."""
    if parts[0].dim() == 1:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    padded = []
    for p in parts:
        extra = width - p.shape[1]
        padding = (extra, 0) if left else (0, extra)
        padded.append(torch.nn.functional.pad(p, padding, value=value) if extra else p)
    return torch.cat(padded)


def _softcapped(model: Any) -> bool:
    """Models whose logits TRL's head post-processes (softcapping, a logit scale): left to TRL's head."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(config, "final_logit_softcapping", None)) or getattr(config, "logit_scale", None) not in (
        None,
        1.0,
    )
