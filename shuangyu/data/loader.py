"""The training loader: packed blocks from a memory-mapped file, shuffled by seed per epoch, disjoint per rank,
resumable at exactly the next batch (`state_dict`/`load_state_dict`; register it with
`accelerator.register_for_checkpointing`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from shuangyu.errors import UsageError

# Per-token flags of conversation rows (a uint8 file beside the tokens): what the loss trains, where an example
# starts (positions restart there), and padding at the end of a row.
FLAG_LOSS, FLAG_START, FLAG_PAD = 1, 2, 4
IGNORE_INDEX = -100


class DataChanged(UsageError):
    """A checkpoint's data position is for other blocks (or another stream) than the loader's: no checkpoint of the
    run can help."""


class PackedBlocks(torch.utils.data.Dataset):
    """Rows `[first, first + count)` of a flat token file, as int64 tensors of `block_size` tokens; with
    `flags_path` (conversation rows), each item is (tokens, uint8 flags)."""

    def __init__(
        self,
        path: str | Path,
        dtype: str,
        block_size: int,
        first: int,
        count: int,
        flags_path: str | Path | None = None,
    ):
        self.path, self.dtype, self.block_size, self.first, self.count = str(path), dtype, block_size, first, count
        self.flags_path = str(flags_path) if flags_path else None
        self._blocks = self._flags = None

    def blocks(self) -> np.ndarray:
        # opened lazily, and per process: a pickled memmap would be copied into the DataLoader's workers
        if self._blocks is None:
            flat = np.memmap(self.path, dtype=self.dtype, mode="r")
            self._blocks = flat.reshape(-1, self.block_size)[self.first : self.first + self.count]
        return self._blocks

    def flags(self) -> np.ndarray:
        if self._flags is None:
            flat = np.memmap(self.flags_path, dtype=np.uint8, mode="r")
            self._flags = flat.reshape(-1, self.block_size)[self.first : self.first + self.count]
        return self._flags

    def __getstate__(self):
        return {**self.__dict__, "_blocks": None, "_flags": None}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        ids = torch.from_numpy(self.blocks()[index].astype(np.int64))
        return (ids, torch.from_numpy(np.array(self.flags()[index]))) if self.flags_path else ids

    def __getitems__(self, indices: list[int]):
        # a whole batch in one fancy index: DataLoader calls this instead of __getitem__ per row
        index = np.asarray(indices)
        ids = torch.from_numpy(self.blocks()[index].astype(np.int64))
        return (ids, torch.from_numpy(self.flags()[index])) if self.flags_path else ids


def restart_positions(starts: torch.Tensor) -> torch.Tensor:
    """Positions counting from the last True of `starts` (or from the row's beginning) at every token."""
    index = torch.arange(starts.shape[-1], device=starts.device).expand_as(starts)
    last_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - last_start


def document_position_ids(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Positions that restart after every end-of-text, for attention limited to each packed document."""
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[..., 1:] = input_ids[..., :-1] == eos_token_id
    return restart_positions(starts)


def process_rank(accelerator=None, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size) of this process: as given, else from `accelerator`, else torch.distributed, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if accelerator is not None:
        return accelerator.process_index, accelerator.num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def validation_rows(available: int, rows: int) -> int:
    """How many rows of a validation source evaluation scores: the first `rows` (0: all) of those `available`."""
    return min(rows, available) if rows else available


class ValidationShard:
    """This process's share of a validation source: the source's first `rows` rows (0: all), strided over the
    processes, so every launch scores the same rows whatever its number of processes or batch size, each once.
    Padded with row 0 to whole batches, as many on every process: each runs the same number of forwards (FSDP
    gathers inside every one) of one shape (a compiled model compiles it once); `scored_rows` says how many of the
    rows are real."""

    def __init__(self, dataset, collate_fn, batch_size: int, rows: int, rank: int, world_size: int):
        n = validation_rows(len(dataset), rows)
        mine = list(range(rank, n, world_size))
        self.scored_rows = len(mine)
        batches = -(-n // (world_size * batch_size))
        padded = mine + [0] * (batches * batch_size - len(mine))
        subset = torch.utils.data.Subset(dataset, padded)
        # its own generator: scoring leaves torch's global one (dropout's, saved in checkpoints) as it was
        self.loader = torch.utils.data.DataLoader(
            subset, batch_size=batch_size, collate_fn=collate_fn, generator=torch.Generator()
        )

    def batches(self) -> Iterator[tuple[dict, int]]:
        """(batch, how many of its first rows are real ones to score)."""
        seen = 0
        for batch in self.loader:
            rows = len(batch["input_ids"])
            yield batch, max(0, min(rows, self.scored_rows - seen))
            seen += rows


class BlockCollator:
    """Batches arrive as one tensor from `PackedBlocks.__getitems__`; name it (and add position ids)."""

    def __init__(self, eos_token_id: int | None):
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.Tensor) -> dict:
        batch = {"input_ids": input_ids}
        if self.eos_token_id is not None:
            batch["position_ids"] = document_position_ids(input_ids, self.eos_token_id)
        return batch


class ConversationCollator:
    """Conversation rows (tokens, flags) as {"input_ids", "labels", "position_ids"}: labels are the tokens the
    loss trains (the assistants' replies and their <|im_end|>) and -100 elsewhere; positions restart at every
    example, which keeps attention inside each example of a packed row. With `trim`, the batch is cut to its
    longest row (one example per row, padded at the end: padding per batch, not per block)."""

    def __init__(self, trim: bool = False):
        self.trim = trim

    def __call__(self, rows) -> dict:
        input_ids, flags = rows
        if self.trim:
            longest = int((flags & FLAG_PAD == 0).sum(-1).max())
            input_ids, flags = input_ids[:, :longest], flags[:, :longest]
        labels = torch.where(flags & FLAG_LOSS != 0, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        return {"input_ids": input_ids, "labels": labels, "position_ids": restart_positions(flags & FLAG_START != 0)}


class BlockSampler(torch.utils.data.Sampler):
    """Batches of block indices for one rank, over a seeded permutation per epoch.

    Global batch k of an epoch is positions [k*W*B, (k+1)*W*B) of the permutation, and rank r takes its
    r-th slice of B: ranks are disjoint, together they see every block once per epoch except the last
    `num_blocks % (W*B)` of the permutation (a different few each epoch), so every step has full batches on
    every rank, which DDP's lock-step and compiled static shapes need. `start_block` skips the blocks
    already consumed (set by BlockLoader on resume) without touching the data.
    """

    def __init__(self, num_blocks: int, batch_size: int, *, seed: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_blocks, self.batch_size, self.seed, self.rank, self.world_size = (
            num_blocks,
            batch_size,
            seed,
            rank,
            world_size,
        )
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_blocks // self.global_batch
        if self.batches_per_epoch == 0:
            raise UsageError(
                f"{num_blocks} training blocks cannot fill one global batch of {self.global_batch} "
                f"(batch size {batch_size} x {world_size} processes): lower the batch size or add data"
            )
        self.epoch = 0
        self.start_block = 0

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.permutation(self.epoch)
        used = perm[: self.batches_per_epoch * self.global_batch].reshape(self.batches_per_epoch, self.world_size, -1)
        for k in range(self.start_block // self.global_batch, self.batches_per_epoch):
            yield used[k, self.rank].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_block // self.global_batch


class BlockLoader:
    """A DataLoader over packed blocks whose position survives checkpoints.

    The position counts the batches *delivered to the training loop* (not those the DataLoader's workers
    prefetched), so `state_dict()` taken between steps resumes at exactly the next batch. Each `iter()`
    runs the rest of the current epoch; the next one starts a new permutation. The state is the same on
    every rank (accelerate saves custom state from the main process only).
    """

    def __init__(
        self,
        dataset: PackedBlocks,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        data_key: str | None = None,
        earlier_data_keys: Sequence[str] = (),
        eos_token_id: int | None = None,
        collate_fn=None,
    ):
        self.dataset = dataset
        self.data_key = data_key  # what the blocks are (PreparedData.data_key): a checkpoint is for these or others
        self.earlier_data_keys = frozenset(earlier_data_keys)
        self.sampler = BlockSampler(len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size)
        self.epoch = 0
        self.blocks_seen = 0  # global blocks delivered this epoch, over all ranks
        self.dataloader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            collate_fn=collate_fn or BlockCollator(eos_token_id),
            persistent_workers=False,
            # each iterator draws its workers' base seed from this generator; without one it draws from torch's
            # global generator, which a resumed run restores before its first iterator and an uninterrupted one
            # after: dropout (LoRA's) would then differ from the first step after a resume
            generator=torch.Generator().manual_seed(seed),
        )

    @property
    def pin_memory(self) -> bool:
        """Batches come in pinned memory: only then is a copy to the GPU with non_blocking=True asynchronous."""
        return self.dataloader.pin_memory

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.sampler.batches_per_epoch

    def __iter__(self) -> Iterator[dict]:
        self.sampler.epoch, self.sampler.start_block = self.epoch, self.blocks_seen
        for batch in self.dataloader:
            self.blocks_seen += self.sampler.global_batch
            yield batch
        self.epoch += 1
        self.blocks_seen = 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "blocks_seen": self.blocks_seen,
            "seed": self.sampler.seed,
            "num_blocks": self.sampler.num_blocks,
            "data_key": self.data_key,
        }

    def load_state_dict(self, state: dict) -> None:
        theirs = state.get("data_key")
        if state["num_blocks"] != self.sampler.num_blocks or (
            theirs != self.data_key and theirs not in self.earlier_data_keys
        ):
            raise DataChanged(
                f"the training data changed since the run started: its checkpoints are for other blocks "
                f"({state['num_blocks']:,} blocks, key {str(theirs)[:12]}) than these ({self.sampler.num_blocks:,} "
                f"blocks, key {str(self.data_key)[:12]}); restore the sources, tokenizer and data flags the run "
                "started with (or its --data_dir) to resume"
            )
        if state["seed"] != self.sampler.seed:
            raise UsageError(f"the checkpoint's data seed is {state['seed']}, not {self.sampler.seed}: resume with it")
        if state["blocks_seen"] % self.sampler.global_batch:
            raise UsageError(
                f"the checkpoint stopped after {state['blocks_seen']} blocks of this epoch, not a multiple of the "
                f"global batch {self.sampler.global_batch}: resume with the global batch size it was saved with"
            )
        self.epoch, self.blocks_seen = state["epoch"], state["blocks_seen"]
