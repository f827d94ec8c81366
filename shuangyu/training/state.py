"""What a checkpoint carries besides model, optimizer, scheduler and data position: the step, the tokens seen,
and the count of non-finite steps in a row that stops a diverging run."""

from __future__ import annotations

from shuangyu.errors import RunDiverged


class TrainState:
    def __init__(self):
        self.step, self.tokens, self.bad_in_a_row = 0, 0, 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)

    def advance(self, tokens: int, good: bool, max_bad: int, say=print) -> None:
        """Count an optimizer step; a skipped (non-finite) one is reported, and too many in a row stop the run
        (every process sees the same global gradient norm, so all stop together)."""
        self.step += 1
        self.tokens += tokens
        self.bad_in_a_row = 0 if good else self.bad_in_a_row + 1
        if not good:
            say(f"step {self.step}: non-finite gradient norm, update skipped")
        if self.bad_in_a_row >= max_bad:
            raise RunDiverged(
                f"step {self.step}: {self.bad_in_a_row} non-finite steps in a row (the last good checkpoint is "
                "kept): lower --learning_rate or check the data"
            )
