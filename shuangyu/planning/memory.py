"""Peak memory per process of a train_clm step: weights, gradients, optimizer state, activations, the loss.

Counted from what the code keeps, not fitted: what autograd saves for the backward pass of each op of
shuangyu/modeling/modeling_shuangyu.py, per token and layer, in eager mode:

- parameters and gradients in fp32 (Accelerate's mixed precision autocasts the matmuls, the weights stay fp32);
- AdamW: two fp32 moments per parameter (8 bytes); Muon: one fp32 momentum per matrix in the blocks (4 bytes),
  AdamW's 8 for the embedding and norms; during Muon's step, about 8 more bytes per Muon weight (the Nesterov
  update and the orthogonalised result, for every matrix at once);
- per layer and token, bf16 autocast on a GPU (r = 4 bytes for the fp32 residual stream and norms, a = 2 for
  the autocast activations; h width, k key/value width, i MLP width):
      2 RMSNorms            input and normalised x, fp32             4r h
      q/k/v, gate/up        the bf16 cast of their input, each       5a h   (autocast does not share casts)
      attention             rotated q, k, v and the output (SDPA)    2a h + 2a k
      o_proj                the output made contiguous               a h
      SwiGLU                gate, silu(gate), up, their product      4a i
  i.e. 32 h + 4 k + 8 i bytes; in fp32 on a CPU (no casts: each linear keeps the norm's output) 36 h + 8 k + 16 i;
- the loss (a chunked fp32 head, never the whole logits): the gradients for the hidden states and the head,
  computed in the forward pass, and per chunk of `loss_chunk_size` tokens the logits, their fp32 log-softmax
  and the bf16 gradient: 8 bytes per chunk token per vocabulary entry;
- temporaries: a backward workspace of one layer's gradients (4a i + 4r h per token), or the optimizer step's;
- with gradient checkpointing, only each layer's input (r h per token) plus one layer recomputed;
- under DDP, the gradient buckets (4 bytes per parameter).

The sum counts the gradients and the activations at once, which a step with gradient accumulation does (the
gradients of the earlier micro-batches are kept while the next one runs forward). tests/test_planning.py checks
it against measured runs: on CPU (peak resident memory of real steps, fp32) it is between 0.9x and 1.4x the
measured peak, and for the H100 run in bench/RESULTS.md (124m, batch 16 x 1024, eager: 11.24 GiB) within 10%.
`torch.compile` fuses the elementwise ops and saves less (8.12 GiB compiled there): the estimate errs high.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from shuangyu.planning.shapes import Shape

GIB = 2**30
CUDA_RESERVED_GIB = 1.0  # the CUDA context and kernels, outside torch's allocator
ALLOCATOR_MARGIN = 0.92  # fragmentation in the caching allocator


@dataclass
class MemoryEstimate:
    """Bytes per process at the step's peak."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    loss: int
    temporaries: int  # the backward pass's, or the optimizer step's where larger
    ddp_buckets: int

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def describe(self) -> str:
        parts = [(f.name.replace("_", " "), getattr(self, f.name)) for f in fields(self)]
        return ", ".join(f"{name} {size(value)}" for name, value in parts if value)


def size(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MiB"


def muon_parameters(shape: Shape) -> int:
    return shape.block_matrix_parameters


def estimate(
    shape: Shape,
    micro_batch: int,
    seq_len: int,
    optimizer: str,
    gradient_checkpointing: bool = False,
    processes: int = 1,
    cpu: bool = False,
    loss_chunk_size: int = 4096,
) -> MemoryEstimate:
    params = shape.parameters
    r = 4
    a = 4 if cpu else 2
    h, k, i = shape.width, shape.kv_width, shape.intermediate
    tokens = micro_batch * seq_len

    if optimizer == "muon":
        muon = muon_parameters(shape)
        state = 4 * muon + 8 * (params - muon)
        step_transient = 8 * muon
    else:
        state = 8 * params
        step_transient = 0 if cpu else 4 * params  # foreach AdamW's temporaries on a GPU

    per_layer = (36 * h + 8 * k + 16 * i) if cpu else (32 * h + 4 * k + 8 * i)
    if gradient_checkpointing:
        layers = shape.layers * r * h + per_layer
    else:
        layers = shape.layers * per_layer
    final_norm = 2 * r * h
    activations = tokens * (layers + final_norm)

    chunk = min(loss_chunk_size, tokens)
    grad_hidden, grad_head = tokens * r * h, 4 * shape.embedding_parameters
    loss = max(grad_hidden + grad_head + 8 * chunk * shape.vocab_size, 2 * (grad_hidden + grad_head))
    # the peak is in the backward pass or in the optimizer step, whichever holds more beyond weights, gradients
    # and optimizer state: the step runs after the activations and the loss's buffers are freed
    temporaries = max(tokens * (4 * a * i + 4 * r * h), step_transient - activations - loss)
    return MemoryEstimate(
        weights=4 * params,
        gradients=4 * params,
        optimizer=state,
        activations=activations,
        loss=loss,
        temporaries=temporaries,
        ddp_buckets=4 * params if processes > 1 else 0,
    )


def usable_bytes(memory_gib: float, cpu: bool = False) -> float:
    """What a plan may use of a device: a GPU's memory less the CUDA context and a fragmentation margin; 80% of
    a CPU machine's memory."""
    if cpu:
        return 0.8 * memory_gib * GIB
    return (ALLOCATOR_MARGIN * memory_gib - CUDA_RESERVED_GIB) * GIB
