"""Push a checkpoint folder to the Hugging Face Hub, with its model card.

    python eval/push.py CKPT --hub_model_id USER/NAME [--private] [--revision BRANCH] [--logs DIR]
    (also `python -m shuangyu.sharing.push`)

What goes up, in one commit: the weights (safetensors), config.json with auto_map and the model code, the
tokenizer, generation_config.json, eval_results.json/.md when eval/run.py has run, and README.md, the model
card (written if the folder has none; its "How to use" section is set to load from the Hub repo). `--logs`
adds a tensorboard folder's event files and hparams.yml (nothing else) under runs/. The token comes from $HF_TOKEN or the login cached by `hf auth login`;
it is never printed or written anywhere by Shuangyu.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from shuangyu.errors import UsageError, ctrl_c_is_one_line, print_error, refuse_in_one_line
from shuangyu.sharing.card import model_name, render_card
from shuangyu.sharing.folder import check_model_folder

PROG = "push.py"
# What a Hub license id looks like (apache-2.0, cc-by-nc-sa-4.0, llama3.1, other). huggingface_hub ships no list of
# them (the Hub's is at https://huggingface.co/docs/hub/repositories-licenses and grows), so only the shape is
# checked here: "Apache 2.0" or "MIT" was refused by the Hub at the push, after the card was made.
LICENSE_ID = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*")


def check_folder(folder: Path) -> None:
    """What eval/run.py asks of a checkpoint (config.json, a tokenizer), and safetensors weights; no LoRA
    adapter, whose adapter_config.json names its base model by the local path it was trained from, so that no
    Hub user could load it."""
    if "adapter" in check_model_folder(folder):
        raise UsageError(
            f"{folder} is a LoRA adapter (its base model is named by a local path): merge it into a model folder "
            f"first (python -m shuangyu.training.merge_lora {folder} MERGED) and push that"
        )
    if not any(folder.glob("*.safetensors")):
        raise UsageError(f"{folder} has no *.safetensors weights: save the model with save_pretrained")


def check_token() -> None:
    """A token must exist before anything is sent (its value is never shown)."""
    from huggingface_hub import get_token

    if not get_token():
        raise UsageError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")


def check_repo_id(repo_id: str | None) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not repo_id:
        raise UsageError("give --hub_model_id USER/NAME")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(f"--hub_model_id {repo_id!r}: {err}") from None
    if "/" not in repo_id:
        raise UsageError(f"--hub_model_id {repo_id!r}: give the owner too, as USER/NAME or ORG/NAME")
    return repo_id


def _skipped(path: Path) -> bool:
    """Left behind by writers that crashed (ours write to a dot-name, then rename), or caches."""
    return any(part.startswith(".") or part == "__pycache__" for part in path.parts) or path.suffix in (".tmp", ".pyc")


def _files(root: Path, prefix: str = "") -> dict[str, Path]:
    """path in the repo -> file, for every file under root worth pushing."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if not _skipped(rel):
            found[prefix + rel.as_posix()] = path
    return found


def log_files(logs: Path) -> dict[str, Path]:
    """Only tensorboard's event files and hparams.yml under LOGS, in their layout: a run folder given by mistake
    must not upload its optimizer states, checkpoints and data cache."""
    return {
        name: path
        for name, path in _files(logs, "runs/").items()
        if path.name.startswith("events.out.tfevents.") or path.name == "hparams.yml"
    }


def operations(folder: Path, card: bytes, logs: Path | None) -> list:
    from huggingface_hub import CommitOperationAdd

    files = _files(folder) | (log_files(logs) if logs is not None else {})
    files.pop("README.md", None)  # the card for the Hub replaces the folder's
    ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card)]
    return ops + [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]


def create_repo(repo_id: str, private: bool = False) -> str:
    """Create the repo if it does not exist (checking the token works); returns its URL."""
    from huggingface_hub import HfApi

    try:
        return str(HfApi().create_repo(repo_id, private=private, exist_ok=True))
    except Exception as err:  # HTTP errors, refused connections: say which and stop
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise UsageError(
                f"could not create or reach {repo_id}: the Hub refused the token ({status}): give a token with write "
                "access to it (HF_TOKEN, or `hf auth login`)"
            ) from None
        raise UsageError(f"could not create or reach {repo_id}: {_reason(err)}") from None


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    logs: Path | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    license_name: str | None = None,
    license_link: str | None = None,
) -> str:
    """Push FOLDER (and LOGS under runs/) as one commit; returns the commit's URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    check_folder(folder)
    check_repo_id(repo_id)
    check_token()
    if logs is not None and not Path(logs).is_dir():
        raise UsageError(f"--logs {logs}: not a folder")
    if logs is not None and not log_files(Path(logs)):
        raise UsageError(
            f"--logs {logs} holds no tensorboard event files (events.out.tfevents.*): give the run's tensorboard "
            "folder, e.g. RUN/shuangyu"
        )
    # loading from the Hub repo, naming no local path, in the pushed card; the folder's own card keeps its paths
    card = render_card(
        folder,
        name=repo_id,
        load_path=repo_id,
        license=license,
        license_name=license_name,
        license_link=license_link,
        portable=True,
    ).encode()
    api = HfApi()
    create_repo(repo_id, private)
    try:
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(
            repo_id,
            operations(folder, card, Path(logs) if logs else None),
            commit_message=commit_message or f"Upload {model_name(folder)} with Shuangyu",  # not "final"
            revision=revision,
        )
    except Exception as err:
        raise UsageError(f"push to {repo_id} failed: {_reason(err)}") from None
    return info.commit_url


def _reason(err: Exception) -> str:
    """The first line of an error, which for the Hub's HTTP errors holds the status and the server's message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def parse_args(argv):
    p = refuse_in_one_line(
        argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    p.add_argument("checkpoint", type=Path, help="a model folder (OUTPUT_DIR/final or checkpoints/step-N/model)")
    p.add_argument("--hub_model_id", required=True, help="USER/NAME or ORG/NAME; created if it does not exist")
    p.add_argument(
        "--private", action="store_true", help="create the repo private (an existing repo keeps its setting)"
    )
    p.add_argument("--revision", default=None, help="push to this branch (created from main if missing)")
    p.add_argument(
        "--logs",
        type=Path,
        default=None,
        help="the run's tensorboard folder (e.g. RUN/shuangyu): its event files and hparams.yml go under runs/",
    )
    p.add_argument("--commit_message", default=None)
    p.add_argument(
        "--license",
        default=None,
        help="the card's license, a Hub license id such as mit or cc-by-4.0 (default apache-2.0, or the card's own); "
        "other, with --license_name and --license_link, for one the Hub does not list",
    )
    p.add_argument("--license_name", default=None, help="with --license other: the license's short name")
    p.add_argument("--license_link", default=None, help="with --license other: a link to its text (URL or file)")
    args = p.parse_args(argv)
    check_license(args.license, args.license_name, args.license_link, Path(args.checkpoint))
    return args


def check_license(license: str | None, name: str | None, link: str | None, folder: Path) -> None:
    """Refused before anything is sent: the Hub would refuse the card at the push. For `other`, the Hub asks for
    an id as its name and for its text as a URL or a file pushed with the model."""
    if license is not None and not LICENSE_ID.fullmatch(license):
        raise UsageError(
            f"--license {license!r}: not a Hub license id (lowercase, no spaces: apache-2.0, mit, cc-by-4.0; the list "
            "is at https://huggingface.co/docs/hub/repositories-licenses); for another license pass --license other "
            "--license_name NAME --license_link URL"
        )
    if (name or link) and license != "other":
        raise UsageError(
            "--license_name and --license_link name a license the Hub does not list: add --license other, or drop them"
        )
    if license != "other":
        return
    if not (name and link):
        raise UsageError("--license other: say which license with --license_name NAME and --license_link URL")
    if not LICENSE_ID.fullmatch(name):
        raise UsageError(f"--license_name {name!r}: an id, lowercase without spaces (e.g. my-license-1.0)")
    if not link.startswith(("https://", "http://")) and not (folder / link).is_file():
        raise UsageError(
            f"--license_link {link!r}: neither a URL nor a file in {folder} (e.g. LICENSE, pushed with the model)"
        )


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as err:
        return print_error(PROG, err)
    try:
        url = push_folder(
            args.checkpoint,
            args.hub_model_id,
            private=args.private,
            revision=args.revision,
            logs=args.logs,
            commit_message=args.commit_message,
            license=args.license,
            license_name=args.license_name,
            license_link=args.license_link,
        )
    except UsageError as err:
        return print_error(PROG, err)
    print(f"pushed {args.checkpoint} to {url}")
    return 0


if __name__ == "__main__":
    # a Ctrl-C that main() lets through is one line too, with the exit status for Ctrl-C
    with ctrl_c_is_one_line(PROG, "run it again to finish the push"):
        sys.exit(main())
