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
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from r1lite import ui
from r1lite.errors import R1liteError


class HubError(R1liteError):
    """A push to the Hugging Face Hub cannot work: offline, not logged in, a bad repo id, a refused upload."""


_READY: dict[str, str] = {}  # repo -> the user the Hub accepted for it, in this process


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_ready(repo: str, option: str = "--push-to-hub") -> str:
    """Fail before any work when a push cannot succeed: a bad repo id, offline, not logged in. Returns the user.

    `option` is what the user set (the CLI flag or the recipe key), so the one line names it. A login that
    was accepted is not asked again in this process (GRPO, hours after the pipeline's check, trusts it).
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
    if repo in _READY:
        return _READY[repo]
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
    _READY[repo] = str(who.get("name", "?"))
    return _READY[repo]


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
STOP_WAIT_S = 60.0  # after a signal, the uploads still queued get this long (a spot notice is short); then cancelled


def branch_name(stage: str, step: int) -> str:
    return f"{stage}-step-{step:06d}"


@dataclass
class _Upload:
    branch: str
    future: Future
    copy: Path | None  # a temporary copy to delete once uploaded (or cancelled)


class PushCheckpoints(TrainerCallback):
    """Each checkpoint's adapter (and tokenizer, trainer_state.json) to branch `<stage>-step-NNNNNN` of `repo`, in
    the background; the stage pushes its final adapter to `main` (`push_main`) and waits (`finish`). The stage
    creates it on the main process only."""

    def __init__(self, repo: str, stage: str = "grpo", private: bool = True) -> None:
        self.repo, self.stage, self.private = repo, stage, private
        self.repo_id: str | None = None
        self.pool = ThreadPoolExecutor(max_workers=1)  # one at a time: the branches appear in step order
        self.uploads: list[_Upload] = []
        self.finishing: set[str] = set()  # branches still uploading when the stage closed: they end on their own
        self._lock = threading.Lock()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not folder.is_dir():
            return
        step, copy = state.global_step, None
        try:  # a copy, since the trainer deletes old checkpoints while an upload may still run
            copy = Path(tempfile.mkdtemp(prefix="r1lite-push-"))
            for f in folder.iterdir():
                if f.is_file() and not f.name.endswith(TRAINING_STATE):
                    shutil.copy2(f, copy / f.name)
        except OSError as e:  # no room for the copy: this checkpoint stays unpushed, training goes on
            if copy is not None:
                shutil.rmtree(copy, ignore_errors=True)
            ui.warn(f"tracking.push_to_hub: {branch_name(self.stage, step)} not pushed ({first_line(e)})")
            return
        self._submit(copy, branch_name(self.stage, step), f"r1lite {self.stage} step {step}", owned=True)

    def push_main(self, adapter: Path, steps: int) -> None:
        """The stage's final adapter (a folder that stays) to `main`, after the checkpoints already queued."""
        self._submit(adapter, "main", f"r1lite {self.stage}: the adapter after {steps} steps", owned=False)

    def _submit(self, folder: Path, branch: str, message: str, owned: bool) -> None:
        future = self.pool.submit(self._upload, folder, branch, message, owned)
        future.add_done_callback(lambda f: self._report(branch, f))
        self.uploads.append(_Upload(branch, future, folder if owned else None))

    def _upload(self, folder: Path, branch: str, message: str, owned: bool) -> None:
        from huggingface_hub import HfApi

        try:
            api = HfApi()
            if self.repo_id is None:
                self.repo_id = _create(api, self.repo, self.private)
            if branch != "main":
                api.create_branch(self.repo_id, branch=branch, repo_type="model", exist_ok=True)
            api.upload_folder(
                repo_id=self.repo_id,
                folder_path=str(folder),
                repo_type="model",
                revision=branch,
                commit_message=message,
            )
        finally:
            if owned:
                shutil.rmtree(folder, ignore_errors=True)

    def _report(self, branch: str, future: Future) -> None:
        """A failed upload is one warning as soon as it fails (an expired token shows at once, not hours later);
        one that was still running when the stage closed says when it has gone up."""
        if future.cancelled():
            return
        if (e := future.exception()) is not None:
            ui.warn(f"tracking.push_to_hub: {branch} was not pushed to {self.repo} ({first_line(e)})")
            return
        with self._lock:
            late = branch in self.finishing  # `close` named it as still uploading
        if late:
            ui.say(f"{self.stage}: pushed {branch} to https://huggingface.co/{self.repo_id or self.repo}")

    def finish(self, timeout: float | None = None) -> None:
        """Wait for the uploads (at most `timeout` seconds in all); cancel what is left and say which branches."""
        left = [u for u in self.uploads if not u.future.done()]
        if left:
            ui.say(f"{self.stage}: waiting for {len(left)} upload(s) to {self.repo}")
        try:
            wait([u.future for u in self.uploads], timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Cancel the uploads not started and delete their copies; report each upload by what became of it.

        The one running is not cut off (the process waits for the pool's thread before it exits): it is named as
        still uploading, and `_report` says when it has gone up or failed. Never "not pushed" while it may be.
        """
        self.pool.shutdown(wait=False, cancel_futures=True)
        pushed, running, unsent = [], [], []
        with self._lock:  # against `_report`: an upload that ends now is counted here or reported there, once
            for u in self.uploads:
                if u.future.cancelled():
                    unsent.append(u.branch)
                    if u.copy is not None:
                        shutil.rmtree(u.copy, ignore_errors=True)
                elif not u.future.done():
                    running.append(u.branch)
                    self.finishing.add(u.branch)
                elif u.future.exception() is None:
                    pushed.append(u.branch)
        if pushed:
            which = pushed[0] if len(pushed) == 1 else f"{pushed[0]} ... {pushed[-1]}"
            ui.say(
                f"{self.stage}: pushed {len(pushed)} to https://huggingface.co/{self.repo_id or self.repo} ({which})"
            )
        if running:
            ui.say(f"{self.stage}: still uploading {', '.join(running)}; the process waits for it before it exits")
        if unsent:
            ui.warn(f"tracking.push_to_hub: not pushed (stopped first): {', '.join(unsent)}")
        self.uploads = []
