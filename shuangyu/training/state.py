"""What a checkpoint carries besides model, optimizer, scheduler and data position: the step, the tokens seen,
the training time so far and the count of non-finite steps in a row that stops a diverging run.

The training time is counted over the sessions of a run (a resumed run goes on from its checkpoint's), so the log's
`time_s` and the report's training time are the run's, not the last session's.

The step and the tokens are host integers. Whether a step was good is known on the device only, and reading it
every step would make the host wait for the device (a sync per step), so the bad steps are counted there and
read by `check` at the steps that wait for the device anyway (logging, evaluation, saving). A diverging run is
stopped at the first such step after the limit was reached, with the same message, naming the step it was
reached at; a checkpoint is saved only after `check`, so it never records bad steps as good.
"""

from __future__ import annotations

import time

import torch

from shuangyu.errors import RunDiverged

NEVER = 2**62  # "the limit was not reached": above any step


class TrainState:
    def __init__(self):
        self.step, self.tokens, self.bad_in_a_row = 0, 0, 0
        self.seconds_before = 0.0  # training time of the sessions before this one, up to the checkpoint resumed
        self._session_start = time.perf_counter()
        self._counters: dict[str, torch.Tensor] | None = None  # on the device, made by the first `advance`
        self._read_at = 0  # the step of the last `check`

    def state_dict(self) -> dict:
        self._read()  # saving waits for the device anyway
        return {"step": self.step, "tokens": self.tokens, "bad_in_a_row": self.bad_in_a_row, "seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens, self.bad_in_a_row = state["step"], state["tokens"], state.get("bad_in_a_row", 0)
        self.seconds_before = state.get("seconds", 0.0)  # checkpoints saved before it was kept: 0, a new session
        self._counters, self._read_at = None, self.step

    def start_clock(self) -> None:
        """This session's training begins (after loading, preparing and compiling's set-up)."""
        self._session_start = time.perf_counter()

    def seconds(self) -> float:
        """Seconds of training in this run so far, earlier sessions (to the checkpoint resumed) included."""
        return self.seconds_before + time.perf_counter() - self._session_start

    def advance(self, tokens: int, good: torch.Tensor, max_bad: int) -> None:
        """Count an optimizer step; `good` (a 0-dim bool on the device) is counted there, read by `check`."""
        self.step += 1
        self.tokens += tokens
        if self._counters is None:
            # torch.full fills on the device: no copy from the host, which could wait for the device
            full = lambda value: torch.full((), value, dtype=torch.int64, device=good.device)  # noqa: E731
            self._counters = {
                "in_a_row": full(self.bad_in_a_row),
                "skipped": full(0),  # since the last check
                "last_skipped": full(0),  # its step
                "limit_at": full(NEVER),  # the first step with max_bad in a row
            }
        c, bad = self._counters, ~good
        c["in_a_row"].add_(1).mul_(bad)
        c["skipped"].add_(bad)
        torch.maximum(c["last_skipped"], bad * self.step, out=c["last_skipped"])
        reached = torch.where(c["in_a_row"] >= max_bad, self.step, NEVER)
        torch.minimum(c["limit_at"], reached, out=c["limit_at"])

    def check(self, max_bad: int, say=print) -> None:
        """Read the counters (one host sync), report the updates skipped since the last check, and stop a run
        that reached `max_bad` non-finite steps in a row (every process sees the same global gradient norm, and
        checks at the same steps, so all stop together)."""
        if self._read_at == self.step or self._counters is None:
            return
        skipped, last_skipped, limit_at = self._read()
        since, self._read_at = self._read_at, self.step
        self._counters["skipped"].zero_()
        if skipped == 1:
            say(f"step {last_skipped}: non-finite gradient norm, update skipped")
        elif skipped:
            say(
                f"steps {since + 1}-{self.step}: {skipped} non-finite gradient norms, the last at step "
                f"{last_skipped}; update skipped each time"
            )
        if limit_at != NEVER:
            raise RunDiverged(
                f"step {limit_at}: {max_bad} non-finite steps in a row: lower --learning_rate or check the data"
            )

    def _read(self) -> tuple[int, int, int]:
        """Copy the counters to the host (waits for the device); returns skipped, last skipped and limit step."""
        if self._counters is None:
            return 0, 0, NEVER
        c = self._counters
        in_a_row, skipped, last_skipped, limit_at = torch.stack(
            [c["in_a_row"], c["skipped"], c["last_skipped"], c["limit_at"]]
        ).tolist()
        self.bad_in_a_row = in_a_row
        return skipped, last_skipped, limit_at
