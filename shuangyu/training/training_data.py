"""The run's data: prepared once (on the main process; a cache hit does no work) or opened, then checked; or, with
--streaming, the sources opened on every process to be read as the run trains."""

from __future__ import annotations

import time
from pathlib import Path

from shuangyu.data.inputs import PrepareArguments
from shuangyu.data.prepare import format_report, prepare
from shuangyu.data.prepared import MANIFEST, PreparedData, read_manifest
from shuangyu.data.streaming import StreamedData
from shuangyu.errors import UsageError
from shuangyu.training.accelerator import first_failure, share_from_main
from shuangyu.training.arguments import DataArguments, SFTArguments


def data_dir(data_args: DataArguments, output_dir: str) -> str:
    return data_args.data_dir or str(Path(output_dir) / "data")


def open_training_data(
    data_args: DataArguments,
    tokenizer_name: str,
    tokenizer,
    seed: int,
    output_dir: str,
    accelerator,
    sft_args: SFTArguments | None = None,
) -> PreparedData | StreamedData:
    """The run's data. The run's own data folder (OUTPUT_DIR/data, made from --train_files) is a cache of the run:
    prepared again whatever tokenizer it was made with (--overwrite_output_dir with a new one; the old run's command
    after that, whose checkpoints then resume over the same blocks). A --data_dir elsewhere is the user's: refused."""
    sft = sft_args is not None and sft_args.sft
    if data_args.streaming:
        return open_streamed_data(data_args, tokenizer, accelerator)
    folder = data_dir(data_args, output_dir)
    rebuilt_because = None
    if data_args.train_files or data_args.dataset_name:
        failure = None
        if accelerator.is_main_process:
            try:
                if sft:
                    prepared = prepare_conversations_for(data_args, sft_args, folder, tokenizer_name, seed)
                    print(f"{folder} is up to date" if prepared.reused else format_conversations(prepared))
                else:
                    own = is_own_data_dir(folder, output_dir)
                    prepared = prepare_blocks_for(data_args, folder, tokenizer_name, seed, accelerator, own)
                    print(f"{folder} is up to date" if prepared.reused else format_report(prepared).lstrip("\n"))
                rebuilt_because = prepared.rebuilt_because
            except UsageError as err:
                failure = str(err)
        # the other processes wait here; they must learn that preparing failed, or they would wait in vain
        failure = share_from_main(accelerator, failure)
        if failure:
            raise UsageError(failure)
    # every process opens the folder that the (global) main process prepared or found: on a machine that does not
    # see it, all processes stop with the same line, or the others would wait for the missing one forever; they look
    # again for a while where the main process sees it (manifest_seen: why), never where it does not (a quick error)
    main_sees = share_from_main(
        accelerator, (Path(folder) / MANIFEST).is_file() if accelerator.is_main_process else None
    )
    seen = manifest_seen(folder, wait=bool(main_sees))
    failure = first_failure(accelerator, None if seen else not_found(folder, accelerator))
    if failure:
        raise UsageError(failure)
    data = PreparedData.load(folder, tokenizer)
    data.rebuilt_because = rebuilt_because  # the main process's, which says what went wrong on a resume
    if data.is_conversations != sft:
        what = "conversations (for --sft)" if data.is_conversations else "plain text blocks (for pretraining)"
        raise UsageError(
            f"--data_dir {folder} holds {what}; pass {'--sft' if not sft else 'a folder prepared for --sft'}"
        )
    if data.block_size != data_args.block_size:
        raise UsageError(
            f"--data_dir {folder} holds rows of {data.block_size} tokens, not --block_size {data_args.block_size}: "
            f"pass --block_size {data.block_size}, or --train_files to prepare the data again"
        )
    return data


# how long a process looks again for the folder that the main process just wrote or found: NFS may go on answering
# "no such file" from its cache for up to acdirmax (60 s by default) on another machine
SHARED_FOLDER_WAIT_S = 60.0
SHARED_FOLDER_POLL_S = 1.0


def manifest_seen(folder: str, wait: bool) -> bool:
    """The folder's manifest is there: at once on the main process's machine (no wait); `wait`: looked for again for
    up to SHARED_FOLDER_WAIT_S, then not there."""
    manifest = Path(folder) / MANIFEST
    deadline = time.monotonic() + (SHARED_FOLDER_WAIT_S if wait else 0)
    while not manifest.is_file():
        if time.monotonic() >= deadline:
            return False
        time.sleep(SHARED_FOLDER_POLL_S)
    return True


def not_found(folder: str, accelerator) -> str:
    if accelerator.is_main_process:
        return "no training data: give --train_files (or --dataset_name), or a prepared --data_dir"
    return (
        f"process {accelerator.process_index} does not find {folder}, which the main process prepared or found: on "
        "several machines --output_dir (or --data_dir) must be on a disk every machine sees"
    )


# prepare's flags under train_clm.py's names; "" for one it does not have
TRAIN_CLM_FLAGS = {
    "--files": "--train_files",
    "--dataset": "--dataset_name",
    "--output_dir": "--data_dir",
    "--num_proc": "--preprocessing_num_workers",
    "--overwrite": "",
}


def sources_for(data_args: DataArguments, folder: str, tokenizer_name: str, seed: int) -> dict:
    """What text and conversations are prepared from, in train_clm.py's flags."""
    return {
        "output_dir": folder,
        "tokenizer_name": tokenizer_name,
        "files": data_args.train_files,
        "dataset": data_args.dataset_name,
        "dataset_split": data_args.dataset_split,
        "exclude": data_args.exclude,
        "validation_files": data_args.validation_files,
        "block_size": data_args.block_size,
        "seed": seed,
    }


def is_own_data_dir(folder: str, output_dir: str) -> bool:
    """The folder is the run's own OUTPUT_DIR/data (the default --data_dir, or named as such)."""
    return Path(folder).resolve() == (Path(output_dir) / "data").resolve()


def prepare_blocks_for(
    data_args: DataArguments, folder: str, tokenizer_name: str, seed: int, accelerator, own: bool = False
):
    """Blocks prepared into `folder`. `own`: it is the run's OUTPUT_DIR/data, so messages name --output_dir and
    prepared data of another tokenizer there is replaced (a folder of anything else never is: it may not be a
    run's)."""
    args = PrepareArguments(
        **sources_for(data_args, folder, tokenizer_name, seed),
        text_column=data_args.text_column,
        num_proc=data_args.preprocessing_num_workers or 1,
        skip_bad_lines=data_args.skip_bad_lines,
        **({} if data_args.validation_fraction is None else {"validation_fraction": data_args.validation_fraction}),
        overwrite=own and read_manifest(Path(folder)) is not None,
    )
    args.flag_names = {**TRAIN_CLM_FLAGS, "--output_dir": "--output_dir"} if own else TRAIN_CLM_FLAGS
    return prepare(args, show_progress=accelerator.is_local_main_process)


def prepare_conversations_for(data_args: DataArguments, sft_args: SFTArguments, folder: str, tokenizer_name: str, seed):
    from shuangyu.data.conversations import ConversationArguments, prepare_conversations

    sources = sources_for(data_args, folder, tokenizer_name, seed)
    return prepare_conversations(
        ConversationArguments(**sources, packing=sft_args.packing, overlong=sft_args.sft_overlong)
    )


def format_conversations(data: PreparedData) -> str:
    from shuangyu.data.conversations import format_report as conversations_report

    return conversations_report(data)


def open_streamed_data(data_args: DataArguments, tokenizer, accelerator) -> StreamedData:
    """--streaming: the sources opened and checked on every process (a process that fails stops all of them with
    its message). The flags that cannot go with --streaming were refused when parsed (arguments.check_streaming)."""
    from shuangyu.data.stream_sources import stream_sources

    data, failure = None, None
    try:
        data = StreamedData(
            stream_sources(data_args.train_files, data_args.dataset_name, data_args.exclude),
            tokenizer,
            data_args.block_size,
            split=data_args.dataset_split,
            text_column=data_args.text_column,
            window=data_args.shuffle_window,
            validation_files=data_args.validation_files,
            validation_docs=data_args.validation_docs,
            say=accelerator.print,
        )
    except UsageError as err:
        failure = str(err)
    failure = first_failure(accelerator, failure)
    if failure:
        raise UsageError(failure)
    accelerator.print(data.report(accelerator.num_processes))
    return data


def check_stream(loader, accelerator) -> None:
    """--streaming: every process has documents of every source, checked before the first step (a process that
    has none stops all of them with its message)."""
    failure = None
    try:
        loader.check_sources()
    except UsageError as err:
        failure = str(err)
    if failure := first_failure(accelerator, failure):
        raise UsageError(failure)


def stream_positions(loader, accelerator) -> list[dict]:
    """--streaming: every process's stream position, in rank order, on every process (a collective: all call it)."""
    if accelerator.num_processes == 1:
        return [loader.state_dict()]
    from accelerate.utils import gather_object

    return gather_object([loader.state_dict()])
