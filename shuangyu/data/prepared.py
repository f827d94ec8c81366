"""A prepared data folder: its manifest, and the datasets and loaders over its blocks.

On disk: `manifest.json`, `train.bin`, `validation.bin` (and, for conversations prepared by
shuangyu.data.conversations, `train.bin.flags` and `validation.bin.flags`: what the loss trains, where examples
start, padding). The `.bin` files are flat numpy arrays (uint16 when
the vocabulary fits, else uint32) read through `np.memmap`: a batch is one fancy-index into the page cache and
one `torch.from_numpy`, which is what makes the loader far faster than a GPU can eat; Arrow rows would cost a
Python object per row or a format conversion per batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shuangyu.data.inputs import FORMAT_VERSION
from shuangyu.errors import UsageError
from shuangyu.tokenizer.loading import tokenizer_fingerprint

if TYPE_CHECKING:  # the loader imports torch (seconds): imported where used, so prepare's --help answers at once
    from shuangyu.data.loader import BlockLoader, PackedBlocks, ValidationShard

MANIFEST = "manifest.json"
TRAIN_FILE = "train.bin"
VALIDATION_FILE = "validation.bin"
FLAGS_SUFFIX = ".flags"  # conversation folders: a uint8 file of per-token flags beside each token file (loader.py)
PROG = "python -m shuangyu.data.prepare"


@dataclass
class PreparedData:
    """A prepared folder: its manifest, and datasets and loaders over its blocks."""

    path: Path
    manifest: dict
    reused: bool = False  # prepare found this folder up to date and did no work
    rebuilt_because: str | None = None  # prepare replaced an earlier folder: what had changed since

    @classmethod
    def load(cls, path: str | Path, tokenizer=None) -> PreparedData:
        """Open a prepared folder; with `tokenizer`, check that the blocks were made with it."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest is None:
            raise UsageError(f"{path}: not a prepared data folder (no {MANIFEST}); run `{PROG} prepare` first")
        data = cls(path, manifest)
        if tokenizer is not None:
            data.check_tokenizer(tokenizer)
        return data

    @property
    def key(self) -> str:
        """The inputs' key (inputs.py): what prepare compares to know whether to prepare again."""
        return self.manifest["key"]

    @property
    def data_key(self) -> str:
        """What a checkpoint's data position is for: the blocks themselves, so that preparing the same blocks again
        (a corpus copied anew, a checkout that touched its files) resumes. A folder prepared before the blocks were
        hashed has only its inputs' key."""
        return self.manifest.get("blocks_sha256") or self.manifest["key"]

    @property
    def earlier_data_keys(self) -> list[str]:
        """Other keys a checkpoint of these same blocks may carry: the inputs' keys it was saved with before the
        loader keyed the blocks by their content."""
        return [self.manifest["key"], *self.manifest.get("earlier_keys", [])]

    @property
    def block_size(self) -> int:
        return self.manifest["block_size"]

    @property
    def eos_token_id(self) -> int:
        return self.manifest["tokenizer"]["eos_token_id"]

    @property
    def is_conversations(self) -> bool:
        """Rows of conversations (labels and positions per example), not of plain text."""
        return self.manifest.get("kind") == "conversations"

    def _blocks(self, file: str, first: int, count: int) -> PackedBlocks:
        from shuangyu.data.loader import PackedBlocks

        flags = self.path / (file + FLAGS_SUFFIX) if self.is_conversations else None
        return PackedBlocks(self.path / file, self.manifest["dtype"], self.block_size, first, count, flags)

    def collator(self, position_ids: bool = False):
        from shuangyu.data.loader import BlockCollator, ConversationCollator

        if self.is_conversations:
            return ConversationCollator(trim=not self.manifest["packing"])
        return BlockCollator(self.eos_token_id if position_ids else None)

    def check_tokenizer(self, tokenizer) -> None:
        theirs = self.manifest["tokenizer"]
        sha = tokenizer_fingerprint(tokenizer)
        if sha != theirs["sha256"]:
            raise UsageError(
                f"{self.path}: prepared with tokenizer {theirs['name']} (vocab {theirs['vocab_size']:,}, sha256 "
                f"{theirs['sha256'][:12]}), not this one (vocab {len(tokenizer):,}, sha256 {sha[:12]}): "
                f"re-run prepare with this --tokenizer_name, or train with the tokenizer the data was made with"
            )

    def check_vocab_size(self, vocab_size: int) -> None:
        """A model must have an embedding row for every id in the blocks."""
        needed = self.manifest["tokenizer"]["vocab_size"]
        if vocab_size < needed:
            raise UsageError(
                f"{self.path}: the blocks hold ids up to {needed - 1} (tokenizer vocab {needed:,}) but the model's "
                f"vocab_size is {vocab_size:,}: set the model's vocab_size to at least {needed:,}"
            )

    def train_dataset(self) -> PackedBlocks:
        return self._blocks(TRAIN_FILE, 0, self.manifest["train"]["blocks"])

    def validation_datasets(self) -> dict[str, PackedBlocks]:
        """One dataset per validation source (language), for a loss per language. Wrap each in a DataLoader
        and `accelerator.prepare` it: accelerate's even batches and `gather_for_metrics` suit evaluation."""
        return {
            name: self._blocks(VALIDATION_FILE, v["first_block"], v["blocks"])
            for name, v in self.manifest["validation"].items()
            if v["blocks"] > 0
        }

    def validation_shards(
        self, batch_size: int, rows: int, rank: int, world_size: int, *, position_ids: bool = False
    ) -> dict[str, ValidationShard]:
        """This process's share of each validation source's first `rows` rows (0: all), in batches of
        `{"input_ids": [batch, block]}` (and labels and positions for conversations); `position_ids`: positions
        restarting per document, as `train_loader` gives them, so validation scores the attention training used."""
        from shuangyu.data.loader import ValidationShard

        return {
            name: ValidationShard(ds, self.collator(position_ids), batch_size, rows, rank, world_size)
            for name, ds in self.validation_datasets().items()
        }

    def train_loader(
        self,
        batch_size: int,
        *,
        accelerator=None,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        position_ids: bool = False,
    ) -> BlockLoader:
        """The training loader for this process. Ranks come from `accelerator` (or torch.distributed, or the
        arguments). Do not pass it to `accelerator.prepare` (that would shard it again); move batches to the
        device yourself and `accelerator.register_for_checkpointing(loader)` for exact resume."""
        from shuangyu.data.loader import BlockLoader, process_rank

        rank, world_size = process_rank(accelerator, rank, world_size)
        return BlockLoader(
            self.train_dataset(),
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            data_key=self.data_key,
            earlier_data_keys=self.earlier_data_keys,
            collate_fn=self.collator(position_ids),
        )


def read_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path / MANIFEST}: unreadable ({err}); delete {path} and prepare again") from None
    if manifest.get("format") != FORMAT_VERSION:
        return None
    return manifest


def blocks_sha256(folder: Path, dtype: str, block_size: int, served: str = "") -> str:
    """sha256 of the rows a folder holds (tokens, and conversations' flags) and of how they are read and `served`
    (conversations: packed, or cut to the longest row of each batch): what its data key says. Read back from the
    page cache right after writing, it costs about a second per GB."""
    digest = hashlib.sha256(f"{dtype} {block_size} {served}\n".encode())
    buffer = memoryview(bytearray(1 << 24))
    for name in (TRAIN_FILE, VALIDATION_FILE, TRAIN_FILE + FLAGS_SUFFIX, VALIDATION_FILE + FLAGS_SUFFIX):
        path = folder / name
        if not path.is_file():
            continue
        digest.update(f"{name} {path.stat().st_size}\n".encode())
        with open(path, "rb") as fh:
            while n := fh.readinto(buffer):
                digest.update(buffer[:n])
    return digest.hexdigest()


def record_blocks(manifest: dict, folder: Path, before: dict | None, old_folder: Path) -> None:
    """Add to the `manifest` of the rows just written into `folder` the hash of those rows (what a checkpoint's data
    position is for) and the keys still accepted from `before`, the manifest of the folder it replaces."""
    manifest["blocks_sha256"] = blocks_sha256(folder, manifest["dtype"], manifest["block_size"], served_as(manifest))
    manifest["earlier_keys"] = same_blocks_keys(before, old_folder, manifest["blocks_sha256"])


def same_blocks_keys(before: dict | None, folder: Path, blocks_sha: str) -> list[str]:
    """The keys to keep accepting when `folder`, prepared from `before` (its manifest), is prepared again: if the
    blocks came out the same, those of its checkpoints saved before blocks were hashed (its inputs' key). Call it
    before the new folder replaces the old one: a manifest without the blocks' hash has its files hashed here."""
    if before is None:
        return []
    earlier = before.get("earlier_keys", [])
    old_sha = before.get("blocks_sha256")
    if old_sha is None:
        try:
            old_sha = blocks_sha256(folder, before["dtype"], before["block_size"], served_as(before))
        except (OSError, KeyError):  # a damaged old folder: its checkpoints cannot be matched to it anyway
            return []
        earlier = [*earlier, before["key"]]
    return earlier if old_sha == blocks_sha else []


def served_as(manifest: dict) -> str:
    """How the loader serves a folder's rows beyond their bytes: conversations unpacked are cut per batch."""
    return f"packing={manifest['packing']}" if manifest.get("kind") == "conversations" else ""
