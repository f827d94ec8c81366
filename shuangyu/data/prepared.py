"""A prepared data folder: its manifest, and the datasets and loaders over its blocks.

On disk: `manifest.json`, `train.bin`, `validation.bin` (and, for conversations prepared by
shuangyu.data.conversations, `train.bin.flags` and `validation.bin.flags`: what the loss trains, where examples
start, padding). The `.bin` files are flat numpy arrays (uint16 when
the vocabulary fits, else uint32) read through `np.memmap`: a batch is one fancy-index into the page cache and
one `torch.from_numpy`, which is what makes the loader far faster than a GPU can eat; Arrow rows would cost a
Python object per row or a format conversion per batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shuangyu.data.inputs import FORMAT_VERSION
from shuangyu.data.loader import (
    BlockCollator,
    BlockLoader,
    ConversationCollator,
    PackedBlocks,
    ValidationShard,
    process_rank,
)
from shuangyu.errors import UsageError
from shuangyu.tokenizer.loading import tokenizer_fingerprint

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
        return self.manifest["key"]

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
        flags = self.path / (file + FLAGS_SUFFIX) if self.is_conversations else None
        return PackedBlocks(self.path / file, self.manifest["dtype"], self.block_size, first, count, flags)

    def collator(self, position_ids: bool = False):
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

    def validation_shards(self, batch_size: int, rows: int, rank: int, world_size: int) -> dict[str, ValidationShard]:
        """This process's share of each validation source's first `rows` rows (0: all), in batches of
        `{"input_ids": [batch, block]}` (and labels and positions for conversations)."""
        return {
            name: ValidationShard(ds, self.collator(), batch_size, rows, rank, world_size)
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
        rank, world_size = process_rank(accelerator, rank, world_size)
        return BlockLoader(
            self.train_dataset(),
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            data_key=self.key,
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
