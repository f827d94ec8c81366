"""The block loader: shapes, seeded shuffling, exact resume (also through accelerate), disjoint ranks."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from shuangyu.data.inputs import PrepareArguments
from shuangyu.data.loader import ValidationShard, document_position_ids
from shuangyu.data.prepare import prepare
from shuangyu.errors import UsageError

BLOCK = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_tokenizer_dir, data_corpus_slices):
    args = PrepareArguments(
        output_dir=str(tmp_path_factory.mktemp("loader") / "data"),
        tokenizer_name=str(data_tokenizer_dir),
        files=[f"zh={data_corpus_slices['zh_reviews']}:0.5", f"en={data_corpus_slices['en_reviews']}:0.5"],
        block_size=BLOCK,
        num_proc=1,
    )
    return prepare(args, show_progress=False)


def all_rows(data, count=None):
    """The blocks on disk, as bytes (the corpus may hold a few identical blocks: compare as multisets)."""
    return [row.tobytes() for row in np.asarray(data.train_dataset().blocks())[:count]]


def rows_of(batches):
    return [row.numpy().astype(np.uint16).tobytes() for batch in batches for row in batch]


def test_batches_are_int64_blocks_and_an_epoch_sees_each_block_once(prepared):
    loader = prepared.train_loader(batch_size=8, seed=0)
    n = len(prepared.train_dataset())
    batches = [b["input_ids"] for b in loader]
    assert len(batches) == len(loader) == n // 8
    assert all(b.shape == (8, BLOCK) and b.dtype == torch.int64 for b in batches)
    seen = rows_of(batches)
    on_disk = Counter(all_rows(prepared))
    assert len(seen) == n // 8 * 8 and not Counter(seen) - on_disk  # no block twice (beyond its copies)
    assert seen != all_rows(prepared)[: len(seen)]  # shuffled
    second = rows_of([b["input_ids"] for b in loader])
    assert second != seen and not Counter(second) - on_disk  # a new order each epoch
    again = rows_of([b["input_ids"] for b in prepared.train_loader(batch_size=8, seed=0)])
    assert again == seen  # deterministic by seed


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_the_batches_of_an_uninterrupted_run(prepared, num_workers):
    def make():
        return prepared.train_loader(batch_size=16, seed=1, num_workers=num_workers)

    full = make()
    expected = [b["input_ids"] for b in full] + [b["input_ids"] for b in full]
    per_epoch = len(full)
    for stop in (3, per_epoch, per_epoch + 5):  # mid-epoch, at the epoch's end, in the second epoch
        first = make()
        got, stream = [], iter(first)
        while len(got) < stop:
            try:
                got.append(next(stream)["input_ids"])
            except StopIteration:
                stream = iter(first)
        state = first.state_dict()
        del stream  # workers may have prefetched past `stop`: the state must not count those
        restored = make()
        restored.load_state_dict(state)
        while len(got) < len(expected):
            got += [b["input_ids"] for b in restored]
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), f"stop={stop}"


def test_resume_through_accelerate_save_state(prepared, tmp_path):
    from accelerate import Accelerator

    full = prepared.train_loader(batch_size=16, seed=2)
    expected = [b["input_ids"] for b in full]
    accelerator = Accelerator(cpu=True)
    first = prepared.train_loader(batch_size=16, seed=2, accelerator=accelerator)
    accelerator.register_for_checkpointing(first)
    got = []
    for batch in first:
        got.append(batch["input_ids"])
        if len(got) == 5:
            break
    accelerator.save_state(str(tmp_path / "ckpt"))

    accelerator2 = Accelerator(cpu=True)
    restored = prepared.train_loader(batch_size=16, seed=2, accelerator=accelerator2)
    accelerator2.register_for_checkpointing(restored)
    accelerator2.load_state(str(tmp_path / "ckpt"))
    got += [b["input_ids"] for b in restored]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_restoring_onto_other_data_is_refused(prepared):
    state = prepared.train_loader(batch_size=8, seed=0).state_dict()
    with pytest.raises(UsageError, match="the training data changed since the run started: its checkpoints are for"):
        prepared.train_loader(batch_size=8, seed=0).load_state_dict({**state, "data_key": "0" * 64})
    # a checkpoint saved before the blocks were hashed carries the inputs' key: the same blocks, accepted
    prepared.train_loader(batch_size=8, seed=0).load_state_dict({**state, "data_key": prepared.key})
    with pytest.raises(UsageError, match="seed"):
        prepared.train_loader(batch_size=8, seed=1).load_state_dict(state)
    with pytest.raises(UsageError, match="global batch"):
        prepared.train_loader(batch_size=8, seed=0).load_state_dict({**state, "blocks_seen": 12})


def test_ranks_are_disjoint_in_process(prepared):
    per_rank = [
        rows_of([b["input_ids"] for b in prepared.train_loader(batch_size=4, seed=5, rank=r, world_size=3)])
        for r in range(3)
    ]
    n = len(prepared.train_dataset())
    assert all(len(rows) == len(per_rank[0]) for rows in per_rank)  # lock-step: same number of batches
    together = Counter(per_rank[0]) + Counter(per_rank[1]) + Counter(per_rank[2])
    assert together.total() == n // 12 * 12 and not together - Counter(all_rows(prepared))


def test_reading_batches_leaves_torchs_global_generator_alone(prepared):
    """Dropout (LoRA's) draws from torch's global generator, which a checkpoint saves and a resume restores; a
    DataLoader without a generator of its own draws its workers' seed from it at every new iterator, which a
    resumed run creates after the restore: its first steps' dropout then differed from the uninterrupted run's."""
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    train = prepared.train_loader(batch_size=8, seed=0)
    next(iter(train))
    for shard in prepared.validation_shards(batch_size=2, rows=4, rank=0, world_size=1).values():
        list(shard.batches())
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
@pytest.mark.parametrize("rows", [0, 1, 5, 100])
def test_validation_scores_the_first_rows_once_whatever_the_processes(world_size, batch_size, rows):
    dataset = torch.arange(7).repeat_interleave(3).view(7, 3)  # row i holds i

    def collate(items):
        return {"input_ids": torch.stack(items)}

    scored, batches = Counter(), set()
    for rank in range(world_size):
        shard = ValidationShard(dataset, collate, batch_size, rows, rank, world_size)
        shapes = []
        for batch, real in shard.batches():
            scored.update(batch["input_ids"][:real, 0].tolist())
            shapes.append(tuple(batch["input_ids"].shape))
        batches.add(len(shapes))
        assert set(shapes) == {(batch_size, 3)}  # whole batches: one shape to compile
    assert scored == Counter(range(min(rows, 7) if rows else 7))  # the first rows, each once
    assert len(batches) == 1  # every process runs as many forwards (FSDP gathers inside each)


def test_document_position_ids_restart_after_eos():
    ids = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 4], [0, 1, 2, 3, 0, 0, 5, 6]])
    assert document_position_ids(ids, 0).tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 0, 1, 2, 3, 0, 0, 1]]


def test_loader_can_return_position_ids(prepared):
    batch = next(iter(prepared.train_loader(batch_size=2, seed=0, position_ids=True)))
    assert batch["position_ids"].shape == batch["input_ids"].shape
    assert torch.equal(batch["position_ids"], document_position_ids(batch["input_ids"], prepared.eos_token_id))


def test_validation_shards_give_training_s_position_ids_when_asked(prepared):
    """--document_attention: validation was scored with plain causal attention while training attended per
    document; asked, its batches carry the position ids the training loader gives."""
    shards = prepared.validation_shards(batch_size=4, rows=64, rank=0, world_size=1, position_ids=True)
    batches = [batch for shard in shards.values() for batch, _ in shard.batches()]
    ids = torch.cat([b["input_ids"] for b in batches])
    assert (ids == prepared.eos_token_id).sum() > 0  # documents end inside these rows
    positions = torch.cat([b["position_ids"] for b in batches])
    assert torch.equal(positions, document_position_ids(ids, prepared.eos_token_id))
    plain = prepared.validation_shards(batch_size=4, rows=64, rank=0, world_size=1)
    assert all("position_ids" not in batch for shard in plain.values() for batch, _ in shard.batches())


def test_two_processes_see_disjoint_blocks_covering_all(tmp_path, data_tokenizer_dir, data_corpus_slices):
    """Two real processes (torchrun + Accelerator): disjoint blocks whose union is the whole epoch, and
    exact resume from `accelerator.save_state` on every rank."""
    batch = 8
    args = PrepareArguments(
        output_dir=str(tmp_path / "data"),
        tokenizer_name=str(data_tokenizer_dir),
        files=[str(data_corpus_slices["zh_news"])],
        block_size=BLOCK,
        num_proc=1,
    )
    data = prepare(args, show_progress=False)
    usable = data.manifest["train"]["blocks"] // (2 * batch) * (2 * batch)  # the script uses these
    assert usable > 500
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("data_ranks_script.py")
    # torchrun starts the 2 processes (gloo); Accelerator(cpu=True) in each finds the distributed setup.
    # (`accelerate launch --cpu --num_processes 2` starts only one process without an MPI launcher.)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(script), str(data.path), str(tmp_path), str(batch), "7"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [rows_of([torch.load(tmp_path / f"rank{r}.pt")]) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == usable // 2
    on_disk = Counter(all_rows(data, usable))
    # each block once: together the ranks deliver exactly the blocks on disk, each as often as it occurs
    assert Counter(ranks[0]) + Counter(ranks[1]) == on_disk
    # and nothing in common, except contents that occur more than once on disk
    assert all(on_disk[row] > 1 for row in set(ranks[0]) & set(ranks[1]))
    for r in range(2):
        assert (tmp_path / f"resume{r}.txt").read_text().startswith("same"), (tmp_path / f"resume{r}.txt").read_text()


def test_the_docs_loader_snippet_runs_on_a_cpu_without_a_warning(prepared, data_tokenizer_dir):
    """docs/data.md "The loader": its pin_memory=True made torch warn on a CPU that pinned memory is not used."""
    import warnings

    from transformers import AutoTokenizer

    text = (Path(__file__).resolve().parent.parent / "docs" / "data.md").read_text(encoding="utf-8")
    snippet = text.split("## The loader\n\n```python\n")[1].split("```")[0]
    setup = snippet.split("accelerator.load_state")[0].replace('"outputs/data"', repr(str(prepared.path)))
    model = type("Model", (), {"config": type("Config", (), {"vocab_size": 1 << 16})})()
    namespace = {"tokenizer": AutoTokenizer.from_pretrained(data_tokenizer_dir), "model": model}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(compile(setup, "docs/data.md", "exec"), namespace)
        loader = namespace["loader"]
        batch = next(iter(loader))
        batch["input_ids"].to(namespace["accelerator"].device, non_blocking=loader.pin_memory)
    assert batch["input_ids"].shape[0] == 16
