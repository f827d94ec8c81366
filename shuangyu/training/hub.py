"""--push_to_hub: the repo and token checked before training, the finished model pushed after it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.sharing.push import check_repo_id, check_token, create_repo, log_files, push_folder
from shuangyu.training.arguments import HubArguments


def check_hub(hub_args: HubArguments) -> None:
    """The repo id and a token are checked, and the repo created, before training starts, so a run does not
    train for days to fail at the push."""
    try:
        check_repo_id(hub_args.hub_model_id)
        check_token()
        if int(os.environ.get("RANK", "0")) == 0:
            create_repo(hub_args.hub_model_id, hub_args.hub_private_repo)
    except UsageError as err:
        raise UsageError(f"--push_to_hub: {err}") from None


def push_final(out: Path, final: Path, commit_message: str, hub_args: HubArguments) -> bool:
    """Push the finished model (and the tensorboard logs); a failure keeps the model and says how to retry."""
    logs = out / "shuangyu"  # without event files (tensorboard off) there are no logs to push, and no error
    logs = logs if hub_args.hub_push_logs and logs.is_dir() and log_files(logs) else None
    try:
        url = push_folder(
            final,
            hub_args.hub_model_id,
            private=hub_args.hub_private_repo,
            revision=hub_args.hub_revision,
            logs=logs,
            commit_message=commit_message,
        )
    except UsageError as err:
        retry = f"python eval/push.py {final} --hub_model_id {hub_args.hub_model_id}"
        print(f"train_clm.py: error: {err}; the model is saved in {final}: push it with `{retry}`", file=sys.stderr)
        return False
    print(f"pushed to {url}")
    return True
