"""The training loop: docs/reference.md's "Training", top to bottom.

    for each epoch (lr = learning_rate * lr_decay ** max(epoch + 1 - max_epoch, 0)):
        state = zeros
        for each window (x, y) of the training rows:       step.py: forward, loss, backward,
            step(x, y)                                     clip, guard, update, carry the state
        validate (training batch_size and num_steps, dropout off)
        save best.pt (lowest validation so far) and last.pt
    test with the table's protocol (batch_size 1, the whole stream or its first --eval-tokens):
        the final model and best.pt

A run's state apart from its tensors is one RunState (run_state.py), saved in every checkpoint
(`save`) and restored from one (`__init__`). Everything a run writes lives in its run directory
(run_dir.py); under torchrun only rank 0 prints, logs and saves.
"""

from __future__ import annotations

import contextlib
import enum
import time
from pathlib import Path
from typing import Any

import torch

from ptblm import stall
from ptblm.checkpoint import restore_training, training_checkpoint
from ptblm.config import Config, learning_rate_at
from ptblm.data import Corpus, batchify, check_corpus_fits, num_windows, windows
from ptblm.distributed import SINGLE_PROCESS, Distributed
from ptblm.divergence import Diverged, divergence_error
from ptblm.errors import CheckpointError, DivergenceError
from ptblm.evaluate import evaluate, test_perplexity
from ptblm.memory import check_training_fits
from ptblm.model import LSTMLanguageModel, perplexity
from ptblm.progress import Progress, log_every
from ptblm.results import hparams, run_metrics
from ptblm.resume import quit_note, resumable_checkpoint, stopped_by_signal
from ptblm.run_dir import RunDirectory
from ptblm.run_files import BEST, LAST
from ptblm.run_state import RunState
from ptblm.runtime import Threads, configure_tf32, seed_everything
from ptblm.signals import StopOnSignal
from ptblm.step import make_step


class EpochEnd(enum.Enum):
    COMPLETE = "complete"  # every window of the epoch was trained
    MAX_STEPS = "max_steps"  # --max-steps reached
    INTERRUPTED = "interrupted"  # a signal on any rank; last.pt is saved


class Trainer:
    """One run: `Trainer(...)` builds or restores it, `run()` trains, tests and writes it."""

    def __init__(
        self,
        config: Config,
        corpus: Corpus,
        run_dir: Path,
        device: torch.device,
        max_steps: int | None = None,
        eval_tokens: int | None = None,
        command: str = "",
        again: str = "",
        threads: Threads | None = None,
        config_name: str | None = None,
        verbose: bool = True,
        resume: tuple[dict[str, Any], Path] | None = None,
        dist: Distributed = SINGLE_PROCESS,
        unique_name: bool = False,
    ):
        self.config, self.corpus, self.device, self.dist = config, corpus, device, dist
        self.threads = threads  # None: as the caller left torch (the CLI adapts them to load)
        check_corpus_fits(config, corpus, dist.world_size, eval_tokens)
        if device.type == "cuda":
            configure_tf32(config.allow_tf32)

        seed_everything(config.seed)
        check_training_fits(config, device)  # weights, gradients and one window
        self.model = LSTMLanguageModel.from_config(config).to(device)
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        # Each rank trains a contiguous share of the batch's rows; DDP averages the gradients of
        # the equal shares, which is the gradient of the whole batch's mean loss.
        share = config.batch_size // dist.world_size
        self.rank_rows = range(dist.rank * share, (dist.rank + 1) * share)
        self.step = make_step(self.model, self.optimizer, config, dist)
        # Moved to the device once; windows are views cut from it, no per-window copy.
        rows_of_text = batchify(corpus.train, config.batch_size)
        self.train_data = rows_of_text[self.rank_rows.start : self.rank_rows.stop].to(device)
        self.windows_per_epoch = num_windows(self.train_data.size(1), config.num_steps)
        self.tokens_per_window = config.batch_size * config.num_steps  # all ranks together
        self.run_dir = RunDirectory(run_dir)
        self.resumed_from_best = resume is not None and resume[1].name == BEST  # further on
        if resume is None:
            self.run_state = RunState(config_name, max_steps, eval_tokens)
            self.run_dir.create(config, command, dist, device, again, unique_name)
        else:  # everything the checkpoint holds, --max-steps and --eval-tokens included
            self.run_state, self.step.state = restore_training(
                *resume, self.model, self.optimizer, self.step.scaler,
                self.rank_rows, self.windows_per_epoch, dist, device,
            )  # fmt: skip
            # Once the checkpoint is found whole: a refused resume writes nothing.
            self.run_dir.reopen(config, command, again, dist, device, self.run_state.finished)
        self.progress = Progress(self.run_dir.path, enabled=dist.is_main, verbose=verbose)
        total = self.windows_per_epoch * config.max_max_epoch
        self.log_every = log_every(self.run_state.max_steps or total)
        self.shown = False  # the figures, once in this process, from its first window
        self._process_start = time.perf_counter()
        self._wall_before = self.run_state.wall_seconds

    # --- the whole run --------------------------------------------------------------------

    def run(self) -> dict[str, Any] | None:
        """Train to the end (or max_steps), test, write metrics.json; return the metrics
        (None on ranks other than 0, which only train)."""
        run = self.run_state
        if run.finished:  # and tested, if rank 0 finds its metrics.json: it decides for all
            metrics = self.run_dir.read_metrics() if self.dist.is_main else None
            if self.dist.any(metrics is not None, self.device):
                if metrics is not None:
                    self.progress.say(f"{self.run_dir.path} has finished already.")
                    self.run_dir.complete_summary(metrics)  # if a full disk or a kill cut it off
                return metrics
        announce = self.dist.is_main and self.progress.verbose
        path = self.run_dir.path
        with (  # signals first: TensorBoard's import takes a while
            StopOnSignal(not self.dist.enabled, announce, lambda: quit_note(path)) as stop,
            self.progress.open(self.config, resumed_at_step=run.global_step),
        ):
            # Resumed from a best.pt further on than last.pt (whose write failed): last.pt is
            # written from it first, so that it is again the run's latest state (after training,
            # the weights test_ppl is measured on).
            if self.dist.any(self.resumed_from_best, self.device):
                self.save(LAST)
            if self.dist.is_main and not run.finished and 0 <= run.best_step < run.global_step:
                try:  # tested only after training: said now, while it can be put back
                    self.run_dir.best_model()
                except CheckpointError as error:
                    self.progress.warn(
                        f"{error} Put it back before training ends (or a later epoch that "
                        f"validates better writes it anew), or the run finishes without testing it."
                    )
            while not run.finished:
                ended = self.train_epoch(stop)
                if ended is EpochEnd.INTERRUPTED:
                    raise stopped_by_signal(stop, run, path)
                valid_ppl = self.validate(stop)
                if stop.agreed(self.dist, self.device):
                    self.save(LAST)  # the epoch's training is kept; validation reruns
                    raise stopped_by_signal(stop, run, path)
                self.end_epoch(ended, valid_ppl)
            if not self.dist.is_main:
                return None  # rank 0 tests and writes the results

            stream = f"first {run.eval_tokens:,} tokens of the" if run.eval_tokens else "whole"
            self.progress.say(f"Testing (batch size 1, the {stream} test stream)...")
            test_ppl = self.test(self.model, stop)
            best_test_ppl = self.test_best(test_ppl, stop)
            if stop():  # last.pt is final: resuming only tests again
                raise stopped_by_signal(stop, run, path)
            self.progress.scalar("test/ppl", test_ppl, run.global_step)
            untested = {"best_untested": True} if best_test_ppl is None else {}
            summary = self.summary(
                "finished", test_ppl=test_ppl, best_test_ppl=best_test_ppl, **untested
            )
            metrics = run_metrics(summary, run, self.device, self.threads, self.dist.world_size)
            self.progress.hparams(hparams(self.config, run))
        self.run_dir.write_metrics(metrics)
        self.run_dir.write_summary(summary)
        return metrics

    def end_epoch(self, ended: EpochEnd, valid_ppl: float) -> None:
        """Record the epoch, move on, and save best.pt (if it is the best so far) and last.pt."""
        run = self.run_state
        lr = self.optimizer.param_groups[0]["lr"]
        self.progress.scalar("valid/ppl", valid_ppl, run.global_step)
        said = (
            f"Epoch {run.epoch + 1}: learning rate {lr:g}, train perplexity "
            f"{run.train_ppl():.3f}, valid perplexity {valid_ppl:.3f}"
        )
        complete = ended is EpochEnd.COMPLETE
        best = run.end_epoch(
            lr, valid_ppl, complete, self.config.max_max_epoch, self.windows_per_epoch
        )
        if complete:
            self.step.state = None
        if best:
            self.save(BEST)
        self.save(LAST)
        self.progress.say(said)  # after the saves: nothing printing does can cost the epoch

    # --- one epoch -------------------------------------------------------------------------

    def train_epoch(self, stop: StopOnSignal) -> EpochEnd:
        """Train the rest of the current epoch; return why it ended."""
        config, run = self.config, self.run_state
        lr = learning_rate_at(config, run.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if run.window == 0:
            self.step.state = self.model.initial_state(self.train_data.size(0), self.device)
            run.start_epoch()
        self.model.train()
        interval_start = time.perf_counter()
        # The epoch's end, or where --max-steps stops the run if that comes first.
        stop_at = run.window + run.windows_left(self.windows_per_epoch)
        with self.progress.epoch(
            run.epoch, config.max_max_epoch, self.windows_per_epoch, run.window, stop_at
        ) as bar:
            for x, y in windows(self.train_data, config.num_steps, run.window, stop_at):
                try:
                    self.step(x, y)
                except Diverged as diverged:
                    raise self.on_divergence(diverged, lr) from None
                run.window += 1
                run.global_step += 1
                bar.update()
                last = run.window == stop_at
                if run.window % self.log_every == 0 or last:
                    self.account(lr)
                    self.log_interval(lr, time.perf_counter() - interval_start)
                    interval_start = time.perf_counter()
                elif not self.shown or self.progress.wants_figures():
                    self.show_so_far(lr, time.perf_counter() - interval_start)
                self.shown = True
                # After the last window last.pt is written after validation instead.
                every = config.checkpoint_every
                stopping = stop.agreed(self.dist, self.device)
                if stopping or (every and not last and run.global_step % every == 0):
                    self.account(lr)  # GraphStep: the queued windows' GPU time is training too
                    run.bank_interval_time(time.perf_counter() - interval_start)
                    self.save(LAST)
                    interval_start = time.perf_counter()  # the save is not training time
                if stopping:
                    return EpochEnd.INTERRUPTED
        return EpochEnd.COMPLETE if run.window == self.windows_per_epoch else EpochEnd.MAX_STEPS

    def account(self, lr: float) -> None:
        """Add the windows the step has trained since the last call to the run's state (the step
        reads them back here, once per log interval, not once per window)."""
        run = self.run_state
        try:
            trained = self.step.drain()
        except Diverged as diverged:
            back = diverged.windows_after + 1  # to just before the diverged window
            run.global_step, run.window = run.global_step - back, run.window - back
            raise self.on_divergence(diverged, lr) from None
        run.add_windows(trained, self.tokens_per_window)

    def show_so_far(self, lr: float, seconds: float) -> None:
        """The figures between two log points (no TensorBoard point, so that the points of a
        resumed run fall where an uninterrupted run's do)."""
        self.account(lr)
        run = self.run_state
        self.progress.show(
            run.epoch, run.window, self.windows_per_epoch,
            ppl=run.train_ppl(), wps=run.interval_wps(seconds), lr=lr,
        )  # fmt: skip

    def log_interval(self, lr: float, seconds: float) -> None:
        """Account the windows since the last point as training time, and show them."""
        run = self.run_state
        figures = run.close_interval(seconds, self.tokens_per_window, torch.get_num_threads())
        first = not self.shown  # the first window this process trains: a line in a log too
        where = (run.epoch, run.window, self.windows_per_epoch, run.global_step)
        self.progress.train_point(*where, first, lr=lr, **figures)
        if self.dist.is_main:
            share, max_cell = stall.top_layer_figures(self.step.state)
            self.progress.scalar("train/top_silent", share, run.global_step)
            self.progress.scalar("train/top_max_cell", max_cell, run.global_step)
            if stall.follow(run, share, max_cell):
                self.progress.warn(stall.message(share, max_cell))
        if self.threads:
            self.threads.adjust()  # other work may have started or ended

    def on_divergence(self, diverged: Diverged, lr: float) -> DivergenceError:
        """Mark the run diverged in summary.json and return the error to raise (a summary that
        cannot be written is let go: the divergence is what the user must hear about)."""
        run = self.run_state
        if self.dist.is_main:
            with contextlib.suppress(CheckpointError):
                step = run.global_step + 1
                self.run_dir.write_summary(self.summary("diverged", diverged_at_step=step))
        saved = resumable_checkpoint(self.run_dir.path)
        return divergence_error(diverged, run, lr, self.config, saved)

    def test_best(self, test_ppl: float, stop: StopOnSignal) -> float | None:
        """best.pt's test perplexity; None, with a warning, where best.pt is missing or damaged:
        the run finishes without it rather than not at all."""
        if self.run_state.best_step == self.run_state.global_step:
            return test_ppl  # best.pt holds these very weights
        try:
            return self.test(self.run_dir.best_model().to(self.device), stop)
        except CheckpointError as error:
            self.progress.warn(f"{error} The run finishes without testing it.")
            return None

    def validate(self, stop: StopOnSignal) -> float:
        """Training batch_size and num_steps, dropout off; each rank evaluates its own rows."""
        valid, config = self.corpus.valid[: self.run_state.eval_tokens], self.config
        nll, tokens = evaluate(
            self.model, valid, config.batch_size, config.num_steps, self.rank_rows, stop
        )
        return perplexity(*self.dist.sum([nll, tokens], self.device))

    def test(self, model: LSTMLanguageModel, stop: StopOnSignal) -> float:
        return test_perplexity(model, self.corpus.test[: self.run_state.eval_tokens], stop)

    def save(self, name: str) -> None:
        """Write a checkpoint (and flush TensorBoard with it); a collective under torchrun."""
        self.account(self.optimizer.param_groups[0]["lr"])
        self.run_state.wall_seconds = self.wall_seconds()
        self.progress.flush()
        checkpoint = training_checkpoint(
            self.run_state, self.model, self.optimizer, self.step.scaler, self.config,
            self.corpus, self.step.state, self.dist, self.device,
        )  # fmt: skip
        if self.dist.is_main:
            self.run_dir.save_checkpoint(name, checkpoint)
            self.run_dir.write_summary(self.summary("stopped"))  # `ptblm runs` reads it

    def summary(self, status: str, **results: Any) -> dict[str, Any]:
        """summary.json's content now (RunState.summary, with the clock read now)."""
        self.run_state.wall_seconds = self.wall_seconds()
        corpus = {"on_ptb": self.corpus.is_ptb, "splits_sha256": self.corpus.fingerprints}
        return self.run_state.summary(
            status, self.config, self.windows_per_epoch, **corpus, **results
        )

    def wall_seconds(self) -> float:
        return self._wall_before + time.perf_counter() - self._process_start
