"""The scaling laws the planner uses, each with its source, as plain functions of the compute budget.

Compute C is in FLOPs and counted as DeepSeek LLM counts it: C = M * D, where D is training tokens and M the model
scale in *non-embedding FLOPs per token*,

    M = 72 * n_layer * d_model**2 + 12 * n_layer * d_model * l_seq          (DeepSeek LLM, eq. 2)

i.e. 6 FLOPs (forward 2, backward 4) per weight of every matrix in the blocks (72 d^2 = 6 * 12 d^2 for 4 d^2 of
attention projections and 8 d^2 of a SwiGLU MLP 8/3 wide) plus attention's score and value products, and without
the vocabulary head. `shapes.Shape.model_scale` computes the same from an actual shape (GQA, any MLP width).

Sources (numbers checked against the papers' text as quoted by secondary sources; see tests/test_planning.py for
the published points they reproduce):

- DeepSeek LLM: Scaling Open-Source Language Models with Longtermism (Bi et al., 2024, arXiv:2401.02954),
  section 3. Eq. 1, near-optimal hyperparameters as power laws of C, fitted on small budgets with AdamW
  (beta2 0.95, weight decay 0.1, a multi-step schedule) and used for the 7B and 67B runs:
      eta_opt = 0.3118 * C**-0.1250        (peak learning rate)
      B_opt   = 0.2920 * C**0.3271         (global batch, in tokens)
  Eq. 4, the compute-optimal split, from IsoFLOP profiles on budgets of about 1e17 to 3e20 FLOPs:
      M_opt = 0.1715 * C**0.5243,   D_opt = 5.8316 * C**0.4757      (M_opt * D_opt = C)
- Training Compute-Optimal Large Language Models (Hoffmann et al., 2022, arXiv:2203.15556), "Chinchilla":
  parameters and tokens grow equally with compute; about 20 tokens per parameter (Chinchilla itself: 70B
  parameters on 1.4T tokens), with C = 6 * N * D, so N = sqrt(C / 120) and D = 20 * N.
- Scaling Data-Constrained Language Models (Muennighoff et al., 2023, arXiv:2305.16264): up to about 4 passes
  over the same text train nearly as well as fresh text; beyond that repeated tokens are worth less and less.

Both allocation laws were fitted on budgets far above what a single GPU spends in a day; below ~1e17 FLOPs they
are extrapolations, and the planner says so.
"""

from __future__ import annotations

import math

# DeepSeek LLM, eq. 1 and eq. 4 (C in FLOPs, B in tokens).
DEEPSEEK_LR = (0.3118, -0.1250)
DEEPSEEK_BATCH = (0.2920, 0.3271)
DEEPSEEK_MODEL_SCALE = (0.1715, 0.5243)
DEEPSEEK_TOKENS = (5.8316, 0.4757)
FITTED_RANGE = (1e17, 3e20)  # budgets of the IsoFLOP fits

CHINCHILLA_TOKENS_PER_PARAMETER = 20.0
MAX_USEFUL_EPOCHS = 4  # Muennighoff et al.: repeats beyond ~4 passes add little

LAWS = ("deepseek", "chinchilla")


def _power(law: tuple[float, float], compute: float) -> float:
    if not compute > 0:
        raise ValueError(f"compute must be positive, got {compute!r}")
    coefficient, exponent = law
    return coefficient * compute**exponent


def deepseek_model_scale(layers: int, width: int, seq_len: int) -> float:
    """DeepSeek LLM's M for their standard shape: non-embedding FLOPs per token (eq. 2)."""
    return 72 * layers * width**2 + 12 * layers * width * seq_len


def optimal_learning_rate(compute: float) -> float:
    """Peak learning rate for AdamW at compute C (DeepSeek LLM, eq. 1)."""
    return _power(DEEPSEEK_LR, compute)


def optimal_batch_tokens(compute: float) -> float:
    """Global batch size in tokens at compute C (DeepSeek LLM, eq. 1)."""
    return _power(DEEPSEEK_BATCH, compute)


def deepseek_allocation(compute: float) -> tuple[float, float]:
    """(M_opt, D_opt): non-embedding FLOPs per token and training tokens at compute C = M * D (eq. 4)."""
    return _power(DEEPSEEK_MODEL_SCALE, compute), _power(DEEPSEEK_TOKENS, compute)


def chinchilla_allocation(compute: float) -> tuple[float, float]:
    """(N_opt, D_opt): parameters and tokens with D = 20 N and C = 6 N D (Hoffmann et al.)."""
    if not compute > 0:
        raise ValueError(f"compute must be positive, got {compute!r}")
    parameters = math.sqrt(compute / (6 * CHINCHILLA_TOKENS_PER_PARAMETER))
    return parameters, CHINCHILLA_TOKENS_PER_PARAMETER * parameters


def in_fitted_range(compute: float) -> bool:
    low, high = FITTED_RANGE
    return low <= compute <= high
