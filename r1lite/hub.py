"""Sharing on the Hugging Face Hub: an export (`r1lite export --push-to-hub`) and GRPO's checkpoints as they are
written (`tracking.push_to_hub`, like open-r1's revisions).

    >>> user = hub_ready("me/countdown-r1")                  # fails first, in one line: bad id, offline, no login
    >>> url = push(Path("exports/countdown-cpu"), "me/countdown-r1")
    >>> trainer.add_callback(PushCheckpoints("me/countdown-r1"))  # each checkpoint's adapter to a branch

Checkpoints go up in the background, in order, from a copy of their adapter (the trainer deletes old
checkpoints while an upload may still run); a failed upload is reported in one line and training goes on,
since the checkpoints on disk are what a resume uses. Repos are private unless asked otherwise.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.errors import R1liteError

try:  # a trainer callback when transformers is there; the module imports without it
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is a dependency
    TrainerCallback = object  # type: ignore[assignment,misc]


class HubError(R1liteError):
    """A push to the Hugging Face Hub cannot work: offline, not logged in, a bad repo id, a refused upload."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_ready(repo: str, option: str = "--push-to-hub") -> str:
    """Fail before any work when a push cannot succeed: a bad repo id, offline, not logged in. Returns the user.

    `option` is what the user set (the CLI flag or the recipe key), so the one line names it.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise HubError(f"{option} {repo!r} is not a repo id; use NAME or OWNER/NAME") from None
    offline = HubError(f"{option} needs the network and HF_HUB_OFFLINE=1 is set; unset it to push")
    if _offline():
        raise offline
    try:
        who = HfApi().whoami()
    except LocalTokenNotFoundError:
        raise HubError(
            f"{option}: not logged in to the Hugging Face Hub; run `hf auth login` or set HF_TOKEN"
        ) from None
    except OfflineModeIsEnabled:
        raise offline from None
    except Exception as e:  # the network or the Hub: one line, never a traceback (it may hold the token)
        raise HubError(f"{option}: the Hub did not accept the login ({first_line(e)})") from None
    return str(who.get("name", "?"))


def push(out: Path, repo: str, private: bool = True) -> str:
    """Upload an export folder to `repo` (created if needed; private unless `private=False`); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        repo_id = _create(api, repo, private)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(out),
            repo_type="model",
            commit_message=f"r1lite export of {Path(out).name}",
        )
    except Exception as e:  # the network or the Hub: one line, never a traceback (it may hold the token)
        raise HubError(f"pushing {out} to {repo} failed: {first_line(e)}") from None
    return f"https://huggingface.co/{repo_id}"


def _create(api: Any, repo: str, private: bool) -> str:
    """The full repo id (OWNER/NAME) of `repo`, created if it does not exist (an existing one keeps its visibility)."""
    url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    return getattr(url, "repo_id", None) or repo


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ----------------------------------------------------------------------------------------------
# GRPO checkpoints as branches
# ----------------------------------------------------------------------------------------------

TRAINING_STATE = (".pt", ".pth", ".bin")  # optimizer, scheduler, RNG, training args: for resuming here, not sharing


def branch_name(stage: str, step: int) -> str:
    return f"{stage}-step-{step:06d}"


class PushCheckpoints(TrainerCallback):  # type: ignore[misc]
    """Each checkpoint's adapter (and tokenizer, trainer_state.json) to branch `<stage>-step-NNNNNN` of `repo`;
    when the stage reaches its last step, that adapter to `main` too. Only the main process pushes."""

    def __init__(self, repo: str, stage: str = "grpo", private: bool = True) -> None:
        self.repo, self.stage, self.private = repo, stage, private
        self.repo_id: str | None = None
        self.pool = ThreadPoolExecutor(max_workers=1)  # one at a time: the branches appear in step order
        self.pending: list[tuple[str, Future]] = []
        self.snapshots: list[Path] = []
        self.failed: list[str] = []

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not folder.is_dir():
            return
        snapshot = Path(tempfile.mkdtemp(prefix="r1lite-push-"))
        for f in folder.iterdir():
            if f.is_file() and not f.name.endswith(TRAINING_STATE):
                shutil.copy2(f, snapshot / f.name)
        self.snapshots.append(snapshot)
        step = state.global_step
        self._submit(snapshot, branch_name(self.stage, step), f"r1lite {self.stage} step {step}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        last = branch_name(self.stage, state.global_step)
        if state.global_step >= state.max_steps and self.pending and self.pending[-1][0] == last:
            message = f"r1lite {self.stage}: the adapter after {state.global_step} steps"
            self._submit(self.snapshots[-1], "main", message)
        self.finish()

    def _submit(self, folder: Path, branch: str, message: str) -> None:
        self.pending.append((branch, self.pool.submit(self._upload, folder, branch, message)))

    def _upload(self, folder: Path, branch: str, message: str) -> None:
        from huggingface_hub import HfApi

        api = HfApi()
        if self.repo_id is None:
            self.repo_id = _create(api, self.repo, self.private)
        if branch != "main":
            api.create_branch(self.repo_id, branch=branch, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=self.repo_id, folder_path=str(folder), repo_type="model", revision=branch, commit_message=message
        )

    def finish(self) -> None:
        """Wait for the uploads still running; report each that failed in one line (training is not failed by it)."""
        if any(not f.done() for _, f in self.pending):
            ui.log(f"{self.stage}: waiting for {sum(not f.done() for _, f in self.pending)} upload(s) to {self.repo}")
        pushed = []
        for branch, future in self.pending:
            try:
                future.result()
                pushed.append(branch)
            except Exception as e:  # the network or the Hub: one line, never a traceback (it may hold the token)
                self.failed.append(branch)
                ui.warn(f"tracking.push_to_hub: {branch} was not pushed to {self.repo} ({first_line(e)})")
        if pushed:
            which = pushed[0] if len(pushed) == 1 else f"{pushed[0]} ... {pushed[-1]}"
            ui.say(
                f"{self.stage}: pushed {len(pushed)} to https://huggingface.co/{self.repo_id or self.repo} ({which})"
            )
        self.pending = []
        for snapshot in self.snapshots:
            shutil.rmtree(snapshot, ignore_errors=True)
        self.snapshots = []
