"""Reading conversations (for instruction tuning) and preference pairs (for DPO) from files and Hub datasets.

Rows may come in three schemas, converted on read to the one transformers' chat templates and TRL use:

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}     (kept as it is)
    {"instruction": "...", "input": "...", "output": "..."}                           Alpaca
    {"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}, ...]}        ShareGPT

Alpaca rows become one user turn (the instruction, then a blank line and the input when there is one) and one
assistant turn. A conversation must be: an optional system message first, then user and assistant in turn,
starting with a user turn and ending with an assistant turn, every content a non-empty string. Anything else
stops the run with the file and line (or the dataset row) and what is wrong: training on a conversation whose
turns are shuffled or empty teaches the model the wrong thing silently.

Preference rows are TRL's conversational format: `prompt` (messages ending with a user turn), `chosen` and
`rejected` (one assistant message each, or a plain string).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from shuangyu.errors import UsageError
from shuangyu.text.readers import (
    ReadOptions,
    ReadStats,
    _decode_line,
    _decode_whole,
    _open_binary,
    json_reason,
    lone_surrogate,
    numbered_lines,
)
from shuangyu.text.sources import SourceSpec, file_kind

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}
_STRICT = ReadOptions(skip_flag="(no skipping for conversations: fix the line)")


def iter_file_records(path: Path) -> Iterator[tuple[str, object]]:
    """(where, record) for each row of a .jsonl / .json (optionally .gz) or .parquet file; `where` is `file:line`
    (or `file: record N`, `file: row N`) for error messages."""
    suffix, gz = file_kind(path)
    if suffix == ".txt":
        raise UsageError(f"{path}: conversations come as .jsonl, .json or .parquet rows, not .txt")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for a file that is not parquet
            raise UsageError(f"{path}: not a readable parquet file ({err})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}: row {i}", row
        return
    with _open_binary(path, gz) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        fh.seek(0)
        if suffix == ".json" and head.startswith(b"["):
            try:
                records = json.loads(_decode_whole(fh.read(), path))
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{err.lineno}: not valid JSON ({json_reason(err)})") from None
            for i, record in enumerate(records):
                yield f"{path}: record {i}", record
            return
        stats = ReadStats()
        for lineno, raw in numbered_lines(fh):
            if not raw.strip():
                continue
            line = _decode_line(raw, path, lineno, _STRICT, stats)
            try:
                yield f"{path}:{lineno}", json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                raise UsageError(
                    f"{path}:{lineno}: not valid JSON ({json_reason(err)}); fix or remove the line"
                ) from None


def iter_dataset_records(spec: SourceSpec, split: str) -> Iterator[tuple[str, object]]:
    """(where, record) for each row of a Hub dataset (or a local dataset folder), through `datasets`."""
    import datasets

    try:
        ds = datasets.load_dataset(spec.dataset, spec.config, split=split)
    except Exception as err:  # datasets raises many types (connection, missing config, missing split)
        raise UsageError(f"--dataset_name {spec.dataset!r}: could not open it ({type(err).__name__}: {err})") from None
    for i, record in enumerate(ds):
        yield f"--dataset_name {spec.dataset}: row {i}", record


def iter_source_records(spec: SourceSpec, files: list[Path], split: str) -> Iterator[tuple[str, object]]:
    if spec.is_dataset:
        yield from iter_dataset_records(spec, split)
        return
    for path in files:
        yield from iter_file_records(path)


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{where}: {what} is {type(value).__name__}, not a string")
    return value


def to_messages(record: object, where: str) -> list[dict]:
    """The row's conversation as [{"role", "content"}, ...], from any of the three schemas (not yet checked)."""
    if not isinstance(record, dict):
        raise UsageError(f"{where}: expected a JSON object holding a conversation, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list):
            raise UsageError(f"{where}: 'messages' is {type(messages).__name__}, not a list of messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UsageError(f"{where}: message {i} is not an object with 'role' and 'content'")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            raise UsageError(f"{where}: 'conversations' is {type(turns).__name__}, not a list of turns")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise UsageError(f"{where}: turn {i} is not an object with 'from' and 'value' (ShareGPT)")
            role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
            if role is None:
                known = ", ".join(sorted(SHAREGPT_ROLES))
                raise UsageError(f"{where}: turn {i} is from {turn['from']!r}; expected one of {known}")
            messages.append({"role": role, "content": turn["value"]})
        return messages
    if "instruction" in record and "output" in record:
        instruction = _text(record["instruction"], where, "'instruction'")
        extra = record.get("input") or ""
        user = instruction + ("\n\n" + _text(extra, where, "'input'") if extra.strip() else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    fields = ", ".join(map(str, record)) or "none"
    raise UsageError(
        f"{where}: not a conversation: expected 'messages', 'conversations' (ShareGPT) or 'instruction' and "
        f"'output' (Alpaca) (fields: {fields})"
    )


def check_messages(messages: list[dict], where: str, *, ends_with: str = "assistant") -> list[dict]:
    """Raise UsageError unless: an optional system message, then user/assistant in turn from a user turn, ending
    with `ends_with`, every content a non-empty string."""
    if not messages:
        raise UsageError(f"{where}: the conversation has no messages")
    for i, m in enumerate(messages):
        role = m["role"]
        if role not in ("system", "user", "assistant"):
            raise UsageError(f"{where}: message {i} has role {role!r}; expected system, user or assistant")
        content = _text(m["content"], where, f"message {i}'s content")
        if not content.strip():
            raise UsageError(f"{where}: message {i} ({role}) is empty")
        if (surrogate := lone_surrogate(content)) is not None:  # the tokenizer would stop with a TypeError
            raise UsageError(
                f"{where}: message {i} ({role}) is not valid UTF-8 (a lone surrogate, escaped \\u{ord(surrogate):04x}); "
                "fix the file"
            )
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            index = i + len(messages) - len(turns)
            raise UsageError(
                f"{where}: message {index} is {m['role']!r} where {expected!r} was due (roles must go: optional "
                "system, then user and assistant in turn)"
            )
    if ends_with == "assistant" and not any(m["role"] == "assistant" for m in turns):
        raise UsageError(f"{where}: the conversation has no assistant turn to learn from")
    if turns and turns[-1]["role"] != ends_with:
        raise UsageError(f"{where}: the conversation ends with a {turns[-1]['role']} turn, not an {ends_with} turn")
    if not turns:
        raise UsageError(f"{where}: the conversation has only a system message")
    return messages


def read_conversation(record: object, where: str) -> list[dict]:
    return check_messages(to_messages(record, where), where)


def iter_conversations(spec: SourceSpec, files: list[Path], split: str = "train") -> Iterator[list[dict]]:
    """Every conversation of a source, converted and checked."""
    for where, record in iter_source_records(spec, files, split):
        yield read_conversation(record, where)


def read_conversation_files(files: list[Path]) -> list[list[dict]]:
    return [read_conversation(record, where) for path in files for where, record in iter_file_records(Path(path))]


def read_preference(record: object, where: str) -> dict:
    """{"prompt": messages ending with a user turn, "chosen": [assistant], "rejected": [assistant]}, checked."""
    if not isinstance(record, dict) or not {"prompt", "chosen", "rejected"} <= set(record):
        fields = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
        raise UsageError(f"{where}: expected a preference pair with 'prompt', 'chosen' and 'rejected' ({fields})")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    prompt = check_messages(to_messages({"messages": prompt}, where), where, ends_with="user")
    pair = {"prompt": prompt}
    for key in ("chosen", "rejected"):
        value = record[key]
        if isinstance(value, str):
            value = [{"role": "assistant", "content": value}]
        reply = to_messages({"messages": value}, f"{where}: {key}")
        if len(reply) != 1 or reply[0]["role"] != "assistant":
            raise UsageError(f"{where}: '{key}' must be one assistant message")
        check_messages([{"role": "user", "content": "."}, *reply], f"{where}: {key}")
        pair[key] = reply
    if pair["chosen"][0]["content"] == pair["rejected"][0]["content"]:
        raise UsageError(f"{where}: 'chosen' and 'rejected' are the same reply; nothing to prefer")
    return pair


def read_preference_files(files: list[Path]) -> list[dict]:
    return [read_preference(record, where) for path in files for where, record in iter_file_records(Path(path))]
