"""Optimizers: AdamW, or Muon for the hidden weight matrices with AdamW for everything else, in one object.

`--optimizer muon` puts the 2-D weight matrices inside the transformer blocks under Muon (momentum with
Nesterov, then an approximate orthogonalisation by Newton-Schulz iterations) and the embeddings, the
output head, norms and biases under AdamW. Both live in one `torch.optim.Optimizer`, so
`accelerator.prepare`, LR schedulers, gradient clipping and `save_state`/`load_state` treat it as one.

Why not `torch.optim.Muon` alone: it takes only 2-D parameters (so it cannot hold the AdamW groups), and
under data parallelism every rank would orthogonalise every matrix, and under FSDP2 each rank would
orthogonalise its own shard, which is a different (wrong) update. `MuonAdamW` runs the AdamW groups
through `torch.optim.AdamW` itself and writes only the Muon step, which spreads the Newton-Schulz work
over ranks (each matrix is orthogonalised whole, by one rank, and the results are gathered).

A step whose gradients are not finite changes nothing, decided on the device (no host sync): the caller
sets `found_inf` (torch's GradScaler convention, a 0-dim float tensor, 1.0 = skip) before `step`. The AdamW
groups are fused (`torch.optim.AdamW(fused=True)`, whose kernel reads found_inf and leaves parameters, moments
and step count alone); the Muon step computes as usual and `torch.where` keeps the old parameters and momentum.

Muon's update is scaled so that AdamW's learning rate and weight decay carry over
(`muon_scale="match_rms_adamw"`: 0.2 * sqrt(max(rows, cols)), which gives the update the RMS of a typical
AdamW update); `"original"` is Keller Jordan's sqrt(max(1, rows / cols)), for learning rates tuned
for Muon itself (around 0.02).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import groupby

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from torch import nn

from shuangyu.errors import UsageError
from shuangyu.training.arguments import OptimizerArguments

# Quintic Newton-Schulz coefficients (Keller Jordan): a steep slope at zero, so 5 steps suffice; the
# result is U S' V^T with S' roughly in [0.7, 1.2] rather than exactly U V^T, which trains as well.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MUON_SCALES = ("match_rms_adamw", "original")


def newton_schulz(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a 2-D matrix, or each matrix of a [n, rows, cols] stack at once.

    bf16 on GPUs (fast, and accurate enough for an update direction); fp32 elsewhere, where bf16 matmuls
    are slow and the fp32 result is reproducible."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    transposed = x.size(-2) > x.size(-1)
    if transposed:  # iterate on the smaller Gram matrix
        x = x.mT
    # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.mT
    return x.to(matrix.dtype)


def muon_lr_scale(shape: torch.Size, muon_scale: str) -> float:
    rows, cols = shape[0], shape[1]
    if muon_scale == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if muon_scale == "original":
        return math.sqrt(max(1.0, rows / cols))
    raise ValueError(f"muon_scale {muon_scale!r}: choose one of {', '.join(MUON_SCALES)}")


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def _orthogonalize_spread(updates: list[torch.Tensor], steps: int, group=None) -> list[torch.Tensor]:
    """Newton-Schulz for every matrix, batched by shape (a few large matmuls instead of many small ones:
    one per matrix would leave a GPU waiting on kernel launches). With several ranks each takes its
    share of every shape's stack and an all-gather hands every rank all the results."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    world, rank = (dist.get_world_size(group), dist.get_rank(group)) if distributed else (1, 0)
    results: list[torch.Tensor | None] = [None] * len(updates)
    order = sorted(range(len(updates)), key=lambda i: (tuple(updates[i].shape), i))
    for _, same_shape in groupby(order, key=lambda i: tuple(updates[i].shape)):
        same_shape = list(same_shape)
        per_rank = math.ceil(len(same_shape) / world)
        mine = same_shape[rank * per_rank : (rank + 1) * per_rank]
        stack = torch.stack([updates[i] for i in mine]) if mine else None
        local = newton_schulz(stack, steps) if stack is not None else None
        if distributed:
            template = updates[same_shape[0]]
            padded = torch.zeros((per_rank, *template.shape), dtype=template.dtype, device=template.device)
            if local is not None:
                padded[: len(mine)] = local
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded, group=group)
            local = torch.cat(gathered)
        for index, result in zip(same_shape, local, strict=False):
            results[index] = result
    return results


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over param groups tagged `algorithm="muon"` or `algorithm="adamw"`.

    AdamW groups are stepped by a fused `torch.optim.AdamW` that shares this optimizer's group dicts and state,
    so schedulers, clipping and checkpoints see a single optimizer.

    Set `found_inf` (0-dim float32 on the device) before `step` to skip a step on the device where it is not 0,
    as torch's fused optimizers do; `_step_supports_amp_scaling` makes a GradScaler pass its own found_inf this
    way rather than read it on the host. The gradients must be unscaled by then (`accelerator.clip_grad_norm_`
    unscales them); a gradient scale is passed on to the AdamW groups but refused for the Muon ones.
    """

    _step_supports_amp_scaling = True

    def __init__(
        self,
        param_groups: Iterable[dict],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        muon_scale: str = "match_rms_adamw",
    ):
        if muon_scale not in MUON_SCALES:
            raise ValueError(f"muon_scale {muon_scale!r}: choose one of {', '.join(MUON_SCALES)}")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            betas=betas,
            eps=eps,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            muon_scale=muon_scale,
            algorithm="adamw",
        )
        super().__init__(list(param_groups), defaults)
        for group in self.param_groups:
            if group["algorithm"] not in ("muon", "adamw"):
                raise ValueError(f"param group algorithm {group['algorithm']!r}: use 'muon' or 'adamw'")
            if group["algorithm"] == "muon" and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon param groups may hold only 2-D weight matrices")
        self._link_adamw()

    def _link_adamw(self) -> None:
        groups = [g for g in self.param_groups if g["algorithm"] == "adamw"]
        # fused: one kernel per step, the step count kept on the device, and found_inf honoured in the kernel.
        # Set on the groups themselves, over a checkpoint saved before they were fused (fused: None, step counts
        # on the CPU), since AdamW only fills in the settings a group lacks.
        for group in groups:
            group["fused"], group["foreach"] = True, None
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    state["step"] = torch.as_tensor(state["step"], dtype=torch.float32, device=p.device)
        self._adamw = torch.optim.AdamW(groups, fused=True) if groups else None
        if self._adamw is not None:
            self._adamw.state = self.state  # one state dict: checkpoints hold both algorithms' state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link_adamw()  # loading replaced the group dicts and the state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf, grad_scale = getattr(self, "found_inf", None), getattr(self, "grad_scale", None)
        if grad_scale is not None and any(g["algorithm"] == "muon" for g in self.param_groups):
            raise RuntimeError("MuonAdamW takes unscaled gradients: call the GradScaler's unscale_ first")
        if self._adamw is not None:
            self._adamw.found_inf, self._adamw.grad_scale = found_inf, grad_scale  # read by its step
            self._adamw.step()
        finite = None if found_inf is None else found_inf == 0
        for group in self.param_groups:
            if group["algorithm"] == "muon":
                self._muon_step(group, finite)
        return loss

    def _muon_step(self, group: dict, finite: torch.Tensor | None) -> None:
        """With `finite` (0-dim bool on the device), the step is computed as usual and `torch.where` keeps the
        new momentum and parameters only if it is true: a skipped step leaves both bit for bit as they were."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        momentum = group["momentum"]
        updates = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            if finite is None:
                buf.lerp_(p.grad, 1 - momentum)
            else:
                torch.where(finite, buf.lerp(p.grad, 1 - momentum), buf, out=buf)
            # skipped: the update is made of the old momentum, or is NaN (Nesterov); either way it is not applied
            updates.append(p.grad.lerp(buf, momentum) if group["nesterov"] else buf)
        # FSDP2 shards a matrix over ranks; Muon must orthogonalise the whole matrix, never a shard
        full = [u.full_tensor() if _is_dtensor(u) else u for u in updates]
        mesh_group = None
        if _is_dtensor(updates[0]):
            mesh_group = updates[0].device_mesh.get_group()
        orthogonal = _orthogonalize_spread(full, group["ns_steps"], mesh_group)
        for p, u, o in zip(params, updates, orthogonal, strict=True):
            if _is_dtensor(u):
                from torch.distributed.tensor import distribute_tensor

                o = distribute_tensor(o, u.device_mesh, u.placements, src_data_rank=None)
            decay = 1 - group["lr"] * group["weight_decay"]
            alpha = -group["lr"] * muon_lr_scale(p.shape, group["muon_scale"])
            if finite is None:
                p.mul_(decay)
                p.add_(o, alpha=alpha)
            else:
                torch.where(finite, p.mul(decay).add_(o, alpha=alpha), p, out=p)


def parameter_groups(
    model: nn.Module, optimizer: str, weight_decay: float, embedding_learning_rate: float | None = None
) -> list[dict]:
    """Split a causal LM's parameters by role, through the standard HF accessors only.

    muon:  2-D weight matrices inside the blocks (everything 2-D but the token embedding and the head)
    adamw: embeddings and head (with weight decay), then norms and biases (without)

    With `embedding_learning_rate`, the input embedding (with tied weights: the matrix it shares with the head)
    gets a group of its own at that learning rate. Without it the groups are as they always were, so checkpoints
    saved before the option resume."""
    embedding = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    io = embedding | {id(p) for p in (head.parameters() if head is not None else ())}
    matrices, io_weights, embeddings, vectors = [], [], [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            vectors.append(p)
        elif id(p) in embedding and embedding_learning_rate is not None:
            embeddings.append(p)
        elif id(p) in io:
            io_weights.append(p)
        else:
            matrices.append(p)
    if optimizer == "muon":
        groups = [
            {"params": matrices, "algorithm": "muon", "weight_decay": weight_decay},
            {"params": io_weights, "algorithm": "adamw", "weight_decay": weight_decay},
        ]
    elif optimizer == "adamw":
        groups = [{"params": matrices + io_weights, "algorithm": "adamw", "weight_decay": weight_decay}]
    else:
        raise ValueError(f"--optimizer {optimizer!r}: choose adamw or muon")
    if embeddings:
        groups.append(
            {"params": embeddings, "algorithm": "adamw", "weight_decay": weight_decay, "lr": embedding_learning_rate}
        )
    groups.append({"params": vectors, "algorithm": "adamw", "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


FUSED_ADAMW_SINCE = (2, 4)  # torch's fused AdamW kernel on CPU and CUDA


def check_torch_version(version: str = torch.__version__) -> None:
    """The AdamW groups step through torch's fused kernel (no host sync on a skipped step): older torch lacks it
    on the CPU, and fails deep inside the first step; say so before any work."""
    major, minor = (int(part) for part in version.split("+")[0].split(".")[:2])
    if (major, minor) < FUSED_ADAMW_SINCE:
        raise UsageError(
            f"torch {version} has no fused AdamW on every device (torch 2.4 added it): "
            "install torch==2.13.0 (pip install torch==2.13.0, or its CUDA build on a GPU machine)"
        )


def build_optimizer(model: nn.Module, args: OptimizerArguments) -> MuonAdamW:
    """`args.optimizer`: "adamw" (everything under AdamW) or "muon" (hidden matrices under Muon)."""
    check_torch_version()
    return MuonAdamW(
        parameter_groups(model, args.optimizer, args.weight_decay, args.embedding_learning_rate),
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        momentum=args.muon_momentum,
        muon_scale=args.muon_scale,
    )


def clip_and_step(accelerator, model: nn.Module, optimizer, max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the global gradient norm and step; a step whose gradients are not finite leaves the parameters and the
    optimizer state as they were. Returns the norm and whether the step counts as good (a 0-dim bool), both left
    on the device: nothing here waits for it (no host sync); the loop reads them when it logs.

    The skip is decided on the device: the optimizer gets `found_inf` (1.0 where the norm is not finite), as
    torch's fused optimizers get it from a GradScaler. One that does not take it (no `_step_supports_amp_scaling`)
    is stepped only after the norm is read on the host, one sync per step.

    Under fp16 the loss scaler owns overflow: it hands the optimizer its own found_inf and lowers the scale, and
    only an overflow at a scale already below 1 counts as bad; reading the scale for that is one host sync.

    Under DeepSpeed the engine has already clipped (its config's gradient_clipping) and stepped inside
    accelerator.backward; this only reports the norm it measured (a float: DeepSpeed has read it already)."""
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # a float, or None before its first step
        norm = float("nan") if grad_norm is None else float(grad_norm)
        good = grad_norm is None or math.isfinite(norm)
        return torch.tensor(norm), torch.tensor(good, device=accelerator.device)
    if _is_dtensor(grad_norm):  # FSDP2: the global norm, as the same plain tensor on every rank
        grad_norm = grad_norm.full_tensor()
    finite = torch.isfinite(grad_norm)
    if accelerator.scaler is not None:
        optimizer.step()  # the scaler passes its found_inf, or skips the step itself
        good = finite | (accelerator.scaler.get_scale() >= 1.0)
    else:
        inner = getattr(optimizer, "optimizer", optimizer)  # under accelerate's AcceleratedOptimizer
        if getattr(inner, "_step_supports_amp_scaling", False):
            inner.found_inf = (~finite).float()
            optimizer.step()
            del inner.found_inf
        elif finite:
            optimizer.step()
        good = finite
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, good
