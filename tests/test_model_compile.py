import pytest
import torch

from shuangyu.modeling import ShuangyuConfig, ShuangyuForCausalLM


def tiny_model(**overrides):
    torch.manual_seed(0)
    return ShuangyuForCausalLM(ShuangyuConfig.from_preset("tiny", **overrides)).train()


def loss_and_grads(fn, model, **inputs):
    model.zero_grad()
    loss = fn(**inputs).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def check_compiled_matches_eager(model_overrides=None, **extra):
    torch._dynamo.reset()
    model = tiny_model(**(model_overrides or {}))
    x = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    labels = x.clone()
    labels[:, :10] = -100
    compiled = torch.compile(model, fullgraph=True)  # any graph break is an error
    # return_logits=False: the memory-saving training path (chunked head + loss), which the training loop uses.
    inputs = dict(input_ids=x, labels=labels, return_logits=False, **extra)
    eager_loss, eager_grads = loss_and_grads(model, model, **inputs)
    compiled_loss, compiled_grads = loss_and_grads(compiled, model, **inputs)
    assert abs(compiled_loss.item() - eager_loss.item()) < 1e-5
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.slow  # a full-graph compile: 25-150 s on 2 cores
def test_training_forward_compiles_fullgraph_and_matches_eager():
    check_compiled_matches_eager()


@pytest.mark.slow
def test_packed_training_forward_past_the_context_compiles_fullgraph():
    # position_ids restart at 0 for each of three documents: the mask is built inside the graph. The 64 tokens
    # are longer than the context (48), so RoPE is computed on the fly rather than looked up (the table's path
    # is the test above's), as stock clients need when they train past the context.
    positions = torch.cat([torch.arange(20), torch.arange(30), torch.arange(14)]).expand(2, -1)
    check_compiled_matches_eager({"max_position_embeddings": 48}, position_ids=positions)
