"""lm-eval's Hugging Face model as eval/run.py uses it: it checks that every answer fits the model's context
before scoring any (lm-eval asserts it mid-run, without a message), and draws no progress bars into a log file."""

from __future__ import annotations

from shuangyu.errors import UsageError


def hf_model_class(bars: bool):
    """lm-eval's Hugging Face model, checking that every answer fits the model's context before it scores any;
    without progress bars when `bars` is false: its request bars set `disable` themselves (TQDM_DISABLE does
    not reach them), from a `disable_tqdm` argument that its evaluator never passes, so a log file would get
    them as lines of carriage returns."""
    from lm_eval.models.huggingface import HFLM

    class CheckedHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            # (context, answer) -> task, for the message below: the token lists lm-eval scores carry no task
            self.task_of = {req.args: req.task_name for req in requests}
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not bars)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or not bars)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or not bars)

        def _loglikelihood_tokens(self, requests, *args, **kwargs):
            # lm-eval cuts a long context from the left but asserts, batch by batch, that the answer alone fits
            # (a bare AssertionError mid-run); the same test on all of them first, naming the task
            check_answers_fit(requests, getattr(self, "task_of", {}), self.max_length)
            return super()._loglikelihood_tokens(requests, *args, **kwargs)

    return CheckedHFLM


def check_answers_fit(requests, task_of: dict, context: int) -> None:
    """Refuse, naming the tasks, answers (continuations) longer than the model's context: lm-eval cannot score
    them (it keeps the whole answer and cuts only the context)."""
    longest = {}  # task -> tokens of its longest answer over the context
    for key, _context_tokens, answer_tokens in requests:
        if len(answer_tokens) > context:
            task = task_of.get(key) or "a task"
            longest[task] = max(longest.get(task, 0), len(answer_tokens))
    if longest:
        names = ", ".join(sorted(longest))
        sizes = ", ".join(f"{task} {n} tokens" for task, n in sorted(longest.items()))
        raise UsageError(
            f"{names}: an answer is longer than the model's context (longest answer: {sizes}; context: {context} "
            f"tokens), which lm-eval cannot score; evaluate a model with a longer context, or leave {names} out of "
            "--tasks"
        )
