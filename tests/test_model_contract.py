"""The forward contract every transformers causal LM keeps: tuples on request, pre-shifted labels, logits next
to the loss, output capture through `_can_record_outputs`, a tensor-parallel plan that names real modules."""

import fnmatch
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM, ShuangyuModel
from shuangyu.modeling.modeling_shuangyu import ShuangyuAttention, ShuangyuDecoderLayer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(attn="sdpa", seed=0, **overrides) -> ShuangyuForCausalLM:
    torch.manual_seed(seed)
    config = ShuangyuConfig.from_preset("tiny", **overrides)
    return ShuangyuForCausalLM._from_config(config, attn_implementation=attn).eval()


def token_ids(batch=2, seq=16, seed=1):
    return torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def shifted(labels):
    return F.pad(labels[:, 1:], (0, 1), value=-100)


# ------------------------------------------------------------------------------------------- return_dict
def test_return_dict_false_argument_gives_a_tuple():
    model = tiny_model()
    x = token_ids()
    with torch.no_grad():
        out = model(x, labels=x, use_cache=False)
        tup = model(x, labels=x, use_cache=False, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 2  # (loss, logits): None fields are left out
    torch.testing.assert_close(tup[0], out.loss, rtol=0, atol=0)
    torch.testing.assert_close(tup[1], out.logits, rtol=0, atol=0)
    with torch.no_grad():
        base = model.model(x, use_cache=False, return_dict=False)
    assert isinstance(base, tuple) and torch.equal(base[0], out_hidden(model, x))


def out_hidden(model, x):
    with torch.no_grad():
        return model.model(x, use_cache=False).last_hidden_state


def test_config_return_dict_false_gives_tuples_and_the_argument_overrides_it():
    model = tiny_model()
    model.config.return_dict = False
    x = token_ids()
    with torch.no_grad():
        tup = model(x, use_cache=True)  # logits and the cache
        assert isinstance(tup, tuple) and len(tup) == 2 and tup[0].shape == (2, 16, 512)
        assert isinstance(model.model(x), tuple)
        assert hasattr(model(x, return_dict=True), "logits")
        hidden = model(x, output_hidden_states=True, use_cache=False)
    assert isinstance(hidden, tuple) and len(hidden[1]) == 3  # (logits, hidden_states)


# ------------------------------------------------------------------------------------------ shift_labels
@pytest.mark.parametrize("return_logits", [True, False], ids=["logits", "chunked"])
def test_shift_labels_give_the_loss_of_the_labels_they_shift(return_logits):
    model = tiny_model().train()
    x = token_ids(seq=24)
    labels = x.clone()
    labels[0, :6] = -100
    from_labels = model(x, labels=labels, return_logits=return_logits).loss
    from_shifted = model(x, shift_labels=shifted(labels), return_logits=return_logits).loss
    torch.testing.assert_close(from_shifted, from_labels, rtol=0, atol=1e-6)
    # With both given (accelerate's context parallelism passes both), shift_labels are the targets.
    other = torch.roll(x, 3, dims=1)
    both = model(x, labels=labels, shift_labels=shifted(other), return_logits=return_logits).loss
    expected = model(x, labels=other, return_logits=return_logits).loss
    torch.testing.assert_close(both, expected, rtol=0, atol=1e-6)
    assert abs(both.item() - from_labels.item()) > 1e-3


def test_shift_labels_split_across_ranks_sum_to_the_whole_loss():
    # Context parallelism shifts first, then gives each rank a slice of the positions; with num_items_in_batch
    # the slices' losses add up to the loss of the whole sequence. Simulated here on one model by masking.
    model = tiny_model().train()
    x = token_ids(seq=20)
    targets = shifted(x)
    n = int((targets != -100).sum())
    whole = model(x, shift_labels=targets, return_logits=False).loss
    first, second = targets.clone(), targets.clone()
    first[:, 10:] = -100
    second[:, :10] = -100
    parts = [model(x, shift_labels=t, num_items_in_batch=n, return_logits=False).loss for t in (first, second)]
    torch.testing.assert_close(parts[0] + parts[1], whole, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------- logits + loss
def test_logits_come_with_the_loss_by_default():
    model = tiny_model().train()
    x = token_ids()
    out = model(x, labels=x)
    assert out.logits is not None and out.logits.shape == (2, 16, 512)
    reference = F.cross_entropy(out.logits[:, :-1].reshape(-1, 512).double(), x[:, 1:].reshape(-1))
    assert abs(out.loss.item() - reference.item()) < 1e-5
    # The training path: same loss and gradients, no logits.
    out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunked = model(x, labels=x, return_logits=False)
    chunked.loss.backward()
    assert chunked.logits is None and abs(chunked.loss.item() - out.loss.item()) < 1e-6
    for a, b in zip(grads, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)


def test_logits_to_keep_with_labels_keeps_the_whole_loss():
    model = tiny_model()
    x = token_ids()
    with torch.no_grad():
        full = model(x, labels=x)
        last = model(x, labels=x, logits_to_keep=1)
        picked = model(x, logits_to_keep=torch.tensor([0, 5]))
    assert last.logits.shape == (2, 1, 512)
    torch.testing.assert_close(last.logits[:, 0], full.logits[:, -1], rtol=0, atol=1e-6)
    torch.testing.assert_close(last.loss, full.loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(picked.logits, full.logits[:, [0, 5]], rtol=0, atol=1e-6)


def test_trainer_predict_sees_logits_and_loss(tmp_path):
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    class Rows(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            ids = token_ids(1, 12, seed=i)[0]
            return {"input_ids": ids, "labels": ids}

    model = tiny_model()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True, disable_tqdm=True
    )
    result = Trainer(model=model, args=args).predict(Rows())
    assert result.predictions.shape == (4, 12, 512)
    assert result.metrics["test_loss"] == pytest.approx(float(torch.log(torch.tensor(512.0))), abs=0.3)


# -------------------------------------------------------------------------------------- output capture
def test_outputs_are_recorded_from_the_declared_modules():
    model = tiny_model("eager")
    assert model._can_record_outputs == {"hidden_states": ShuangyuDecoderLayer, "attentions": ShuangyuAttention}
    x = token_ids(1, 10)
    seen = []
    hooks = [layer.register_forward_hook(lambda m, a, o: seen.append(o)) for layer in model.model.layers]
    with torch.no_grad():
        out = model(x, output_hidden_states=True, output_attentions=True)
    for h in hooks:
        h.remove()
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    torch.testing.assert_close(out.hidden_states[0], model.model.embed_tokens(x), rtol=0, atol=0)
    torch.testing.assert_close(out.hidden_states[1], seen[0], rtol=0, atol=0)  # the first block's output
    # The last entry is after the final norm, as in every transformers model.
    torch.testing.assert_close(out.hidden_states[-1], model.model.norm(seen[1]), rtol=0, atol=1e-6)
    assert out.attentions[0].shape == (1, 4, 10, 10)
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(1, 4, 10))
    assert torch.all(out.attentions[0].triu(1) == 0)  # causal


def test_output_flags_from_the_config_and_none_by_default():
    model = tiny_model("eager")
    x = token_ids(1, 8)
    with torch.no_grad():
        plain = model(x)
        model.config.output_hidden_states = True
        flagged = model(x)
    assert plain.hidden_states is None and plain.attentions is None
    assert len(flagged.hidden_states) == 3
    assert isinstance(model.model, ShuangyuModel)


# ------------------------------------------------------------------------------------ tensor parallelism
@pytest.mark.parametrize("mlp_type", ["swiglu", "gelu"])
def test_tensor_parallel_plan_names_real_modules_with_known_styles(mlp_type):
    from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES

    model = tiny_model(mlp_type=mlp_type)
    assert model.supports_tp_plan
    plan = model._tp_plan
    assert plan["lm_head"] == "colwise_gather_output"
    names = [name for name, _ in model.named_modules()]
    for pattern, style in plan.items():
        assert style in ALL_PARALLEL_STYLES, style
        assert fnmatch.filter(names, pattern), f"{pattern} matches no module"
    # Every projection in the blocks is sharded: column-wise into the heads / MLP, row-wise out of them.
    linears = [n for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
    for name in linears:
        rule = next(style for pattern, style in plan.items() if fnmatch.fnmatch(f"model.layers.{name}", pattern))
        assert rule == ("rowwise" if name.endswith(("o_proj", "down_proj")) else "colwise"), name


TP_SCRIPT = """
import sys, torch, torch.distributed as dist
from transformers import AutoModelForCausalLM
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, tp_plan="auto", trust_remote_code=True).train()
x = torch.load(folder + "/x.pt")
out = model(x, labels=x)
out.loss.backward()
chunked = model(x, labels=x, return_logits=False).loss
q = model.model.layers[0].self_attn.q_proj.weight
if dist.get_rank() == 0:
    torch.save({"logits": out.logits.detach(), "loss": out.loss.detach(), "chunked": chunked.detach(),
                "q_local_rows": q.to_local().shape[0], "tp_size": model.tp_size}, folder + "/tp.pt")
"""


@pytest.mark.slow
def test_tp_plan_auto_shards_over_two_cpu_processes(tmp_path):
    model = tiny_model(tie_word_embeddings=False)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    x = token_ids(2, 12)
    torch.save(x, folder / "x.pt")
    (tmp_path / "tp.py").write_text(TP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(tmp_path / "tp.py"), str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(folder / "tp.pt")
    with torch.no_grad():
        ref = model(x, labels=x)
    assert got["tp_size"] == 2 and got["q_local_rows"] == 64 // 2  # each rank holds half of q_proj
    torch.testing.assert_close(got["logits"], ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["loss"], ref.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["chunked"], ref.loss, rtol=0, atol=1e-5)
