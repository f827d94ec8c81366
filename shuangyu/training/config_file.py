"""A command's `--config FILE.yaml`: flag values read from a YAML mapping (train_clm.py's, and the DPO command's),
keys that no flag has (a renamed one named with its new name, a misspelt one with the nearest) or that are given
twice refused, and a YAML mistake or an unreadable file said in one line."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import fields
from pathlib import Path

import yaml

from shuangyu.errors import UsageError, closest_name

# flags that changed name: a command or config written for the old one is told what to write instead
RENAMED = {
    "eval_batches": (
        "eval_rows",
        "the validation rows per source, the same whatever the number of processes (the old value x "
        "per_device_eval_batch_size x processes scores the rows it scored)",
    ),
}


def refuse_renamed(names: list[str], where: str | None = None) -> None:
    """UsageError for a renamed flag among command-line words (`where` None) or a --config file's keys."""
    for name in names:
        if where is None and not name.startswith("--"):
            continue
        old = name.removeprefix("--").split("=", 1)[0].replace("-", "_")  # HfArgumentParser takes --eval-rows too
        if old in RENAMED:
            new, meaning = RENAMED[old]
            dash = "--" if where is None else ""
            raise UsageError(f"{where + ': ' if where else ''}{dash}{old} is now {dash}{new}: {meaning}")


def load_yaml_config(path: str, classes, prog: str = "train_clm.py") -> dict:
    """Flag values from a YAML mapping; keys that are no field of `classes` (dataclasses) are refused."""
    try:
        values = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--config {path}: a folder; give a YAML file of flag values") from None
    except UnicodeDecodeError as err:
        raise UsageError(
            f"--config {path}: not UTF-8 text (byte {err.start}); give a YAML file saved as UTF-8"
        ) from None
    except OSError as err:  # no permission, and the like
        raise UsageError(f"--config {path}: cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise UsageError(f"--config {yaml_error_line(path, err)}") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values")
    known = {f.name for cls in classes for f in fields(cls)}
    unknown = sorted(set(values) - known, key=str)
    refuse_renamed(unknown, f"--config {path}")
    if unknown:
        # the command line takes --learning-rate too, a config key only learning_rate: the hint covers both
        near = next((f"; did you mean {n}?" for key in unknown if (n := closest_name(str(key), known))), "")
        keys = "key" if len(unknown) == 1 else "keys"
        raise UsageError(f"--config {path}: unknown {keys} {', '.join(map(str, unknown))}{near} (see {prog} --help)")
    return values


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice in a mapping is an error: SafeLoader keeps the last
    silently, so `max_steps: 2` below `max_steps: 3` trained 2 steps with no word."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden key by key
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # SafeLoader's own error says it
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key} given twice, first on line {first}", key_node.start_mark
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def yaml_error_line(path: str, err: yaml.YAMLError) -> str:
    """`FILE:LINE:COLUMN: not valid YAML (what the parser expected)` in one line; PyYAML's own message is several, with
    the text quoted under a caret and the file called "<unicode string>"."""
    mark = getattr(err, "problem_mark", None)
    if mark is None:
        return f"{path}: not valid YAML ({str(err).splitlines()[0]})"
    problem = getattr(err, "problem", None) or "cannot be read"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start.line != mark.line:
        problem += f", {context} that starts on line {start.line + 1}"
    elif context:
        problem += f", {context}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML ({problem})"
