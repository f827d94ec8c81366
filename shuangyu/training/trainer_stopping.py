"""Clean stops for a transformers Trainer (TRL's DPOTrainer), as train_clm.py's loop stops: the first SIGTERM,
Ctrl-C or closed terminal (SIGHUP) finishes the optimizer step, saves a Trainer checkpoint and ends training;
before training starts one stops at once. The signal handling and the vote are stopping.py's."""

from __future__ import annotations

from transformers import TrainerCallback

from shuangyu.training.stopping import StopAtOnce, StopRequest, should_stop


class StopBetweenSteps(TrainerCallback):
    """Installs a StopRequest as training begins (where `at_once`, the set-up's StopAtOnce, hands over) and ends
    training with a checkpoint at the first step where a signal asks it. `stopped_by`: the signal's name when the
    run stopped before max_steps, else None."""

    def __init__(self, accelerator, at_once: StopAtOnce | None = None):
        self.accelerator, self.at_once = accelerator, at_once
        self.stop: StopRequest | None = None
        self.stopped_by: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.at_once:
            self.at_once.restore()
        self.stop = StopRequest()

    def on_step_end(self, args, state, control, **kwargs):
        # several processes agree on the step (every logging step), or the next collective hangs
        every = max(1, int(state.logging_steps or 1))
        if not should_stop(self.stop, self.accelerator, state.global_step, every):
            return
        control.should_training_stop = True
        if state.global_step < state.max_steps:  # a signal during the last step: the run is complete all the same
            # save at once: an evaluation first would delay the stop, and under --save_strategy best decide the save
            control.should_save, control.should_evaluate = True, False
            self.stopped_by = self.stop.requested

    def on_epoch_end(self, args, state, control, **kwargs):
        # the Trainer ends the epoch after a stop too: an epoch's evaluation and save would rewrite the stop's
        # checkpoint (a kill during that rewrite leaves it half written, its old state still marking it complete)
        if self.stopped_by:
            control.should_save = control.should_evaluate = False

    def on_train_end(self, args, state, control, **kwargs):
        # a run stopped early restores the handlers (a second signal while it exits stops at once); a complete
        # run keeps them, so a signal while final/ is written is only noted and the run exits 0 (train.train_loop)
        if self.stopped_by:
            self.stop.restore()
