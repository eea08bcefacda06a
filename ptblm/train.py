"""The training loop: REFERENCE.md's "Training", top to bottom.

One window of truncated BPTT:
    logits, state = model(x, state)                    state carried from the previous window
    loss = sum over steps of batch-mean cross-entropy  (NOT the mean over tokens: see window_loss)
    loss.backward(); clip all gradients to global norm max_grad_norm; SGD step at the epoch's lr
    state = state.detach()                             values carried, gradients cut

Per epoch: lr = learning_rate * lr_decay ** max(epoch + 1 - max_epoch, 0), the state starts at
zero, then validation (training batch_size and num_steps, dropout off). At the end: test with
the table's protocol (batch_size 1, the whole stream), for the final model and for best.pt.

Everything a run writes lives in its run directory (see README, "Run directory"); only rank 0
prints, logs and saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ptblm import __version__
from ptblm.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_write,
    rng_state,
    save_checkpoint,
    set_rng_state,
    vocab_list,
)
from ptblm.config import Config, config_to_yaml
from ptblm.data import Corpus, batchify, num_windows, windows
from ptblm.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
    Interrupted,
    PtblmError,
)
from ptblm.evaluate import TEST_BATCH_SIZE, TEST_NUM_STEPS, evaluate, perplexity
from ptblm.model import LSTMLanguageModel, detach_state, window_loss

# The published rows (REFERENCE.md), shown beside a run's own numbers.
PUBLISHED = {
    "small": {"train": 37.99, "valid": 121.39, "test": 115.91},
    "medium": {"train": 48.45, "valid": 86.16, "test": 82.07},
    "large": {"train": 37.87, "valid": 82.62, "test": 78.29},
}
LOGS_PER_EPOCH = 10
DIVERGED_LOSS_FACTOR = 10  # a per-token loss above 10 * log(vocab_size) means training diverged


def learning_rate_at(config: Config, epoch: int) -> float:
    """The learning rate of 0-based `epoch`: constant for max_epoch epochs, then decayed."""
    return config.learning_rate * config.lr_decay ** max(epoch + 1 - config.max_epoch, 0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here. Use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: unknown device; use auto, cpu or cuda.") from None


def autocast_context(precision: str, device: torch.device):
    """fp32: nothing. bf16/fp16: autocast for the model (the loss is computed in fp32 anyway).

    On CUDA, autocast runs cuDNN LSTMs in fp16 whatever dtype is asked for, so both bf16 and
    fp16 there use a GradScaler (see make_scaler). On CPU only bf16 is supported.
    """
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a combination that would otherwise fall back silently."""
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("precision fp16 needs a CUDA device; on the CPU use bf16 (or fp32).")


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    if device.type == "cuda" and precision != "fp32":
        return torch.amp.GradScaler("cuda")
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is True on any rank (one tiny all-reduce)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.item() > 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor along dim 1 (the batch rows of an LSTM state)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=1)

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if not self.enabled:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return parts


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, ...),
    if any: NCCL between GPUs, gloo between CPU processes. Each rank gets its own GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        return Distributed(), device
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size), device


@dataclass
class Position:
    """Where a run stands; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 0  # 0-based epoch of the next window
    window: int = 0  # index in that epoch of the next window (0: epoch boundary)
    global_step: int = 0  # training windows done in total
    train_nll: float = 0.0  # this epoch's summed training NLL so far (nats)
    train_tokens: int = 0
    best_valid_ppl: float = math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int = -1  # global_step of best.pt
    finished: bool = False  # training done; only the final test (and metrics) remain
    train_seconds: float = 0.0  # time spent in training windows (evaluation excluded)
    timed_tokens: int = 0  # training tokens processed in that time
    wall_seconds: float = 0.0  # wall-clock time of the run so far, across resumes


class StopOnSignal:
    """First SIGINT/SIGTERM: ask the loop to stop after the current window (it saves last.pt).
    A second SIGINT: leave at once; every file is written atomically, so nothing is corrupted.

    Under torchrun a Ctrl-C reaches each worker twice within milliseconds (from the terminal and
    forwarded by torchrun), so there `exit_on_second` is off: torchrun itself escalates to
    SIGKILL if the workers do not stop in time."""

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self, exit_on_second: bool = True):
        self.received: int | None = None
        self.exit_on_second = exit_on_second
        self._previous = {}

    def __enter__(self):
        for signum in self.EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT and self.exit_on_second:
            os._exit(self.EXIT_CODES[signum])

    def __call__(self) -> bool:
        return self.received is not None


class Trainer:
    """Holds one run's state; `run()` trains, tests and writes the run directory."""

    def __init__(
        self,
        config: Config,
        corpus: Corpus,
        run_dir: Path,
        device: torch.device,
        max_steps: int | None = None,
        command: str = "",
        config_name: str | None = None,
        progress: bool = True,
        resume: dict[str, Any] | None = None,
        dist: Distributed = Distributed(),
    ):
        self.config = config
        self.dist = dist
        self.corpus = corpus
        self.run_dir = Path(run_dir)
        self.device = device
        self.max_steps = max_steps
        self.progress = progress and dist.is_main
        if config.batch_size % dist.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} does not divide by the {dist.world_size} "
                f"processes: each trains an equal share of the rows. Use --set batch_size=N with N "
                f"a multiple of {dist.world_size}, or another --nproc_per_node."
            )
        if len(corpus.vocab) != config.vocab_size:
            raise DataError(
                f"the training split of {corpus.folder} has {len(corpus.vocab)} distinct words but "
                f"vocab_size is {config.vocab_size}. Use --set vocab_size={len(corpus.vocab)}."
            )
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
            torch.backends.cudnn.allow_tf32 = config.allow_tf32
        self.autocast = autocast_context(config.precision, device)
        self.scaler = make_scaler(config.precision, device)

        seed_everything(config.seed)
        self.model = LSTMLanguageModel.from_config(config).to(device)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.parameters, lr=config.learning_rate)
        # Each rank trains a contiguous share of the batch's rows; DDP averages the gradients of
        # the equal shares, which is the gradient of the whole batch's mean loss.
        rows = config.batch_size // dist.world_size
        self.rows = (dist.rank * rows, (dist.rank + 1) * rows)
        self.forward = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            torch.manual_seed(config.seed + dist.rank)  # own dropout masks for own rows
            self.forward = DistributedDataParallel(self.model)
        # Moved to the device once; windows are views cut from it, no per-window copy.
        data = batchify(corpus.train, config.batch_size)
        self.train_data = data[self.rows[0] : self.rows[1]].to(device)
        self.windows_per_epoch = num_windows(self.train_data.size(1), config.num_steps)
        if self.windows_per_epoch < 1:
            raise DataError(
                f"the training split is too short for batch_size {config.batch_size} and "
                f"num_steps {config.num_steps}: not one window fits."
            )
        self.position = Position()
        self.state = None
        self.command = command
        self.config_name = config_name
        if resume is not None:
            self._restore(resume)
        else:
            failure = None
            if dist.is_main:
                try:
                    self._create_run_dir()
                except PtblmError as error:
                    failure = error
            if dist.any(failure is not None, device):  # no rank trains on alone
                raise failure or PtblmError("rank 0 could not create the run directory.")

    # --- run directory and checkpoints ---------------------------------------------------

    def _create_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise ConfigError(
                f"{self.run_dir} already exists. Choose another --name, or continue it with "
                f"ptblm train --resume {self.run_dir}."
            ) from None
        except OSError as error:
            raise DataError(
                f"cannot create the run directory {self.run_dir} ({error.strerror}). "
                f"Choose a writable one with --runs-dir DIR."
            ) from None
        header = (
            f"Resolved config of this run (ptblm {__version__}), written by:\n  {self.command}\n"
            f"Train again with: ptblm train --config {self.run_dir / 'config.yaml'}"
        )
        text = config_to_yaml(self.config, header)
        try:
            atomic_write(self.run_dir / "config.yaml", lambda file: file.write(text.encode()))
        except OSError as error:
            raise DataError(
                f"cannot write {self.run_dir / 'config.yaml'} ({error.strerror})."
            ) from None

    def _checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict (a collective under torchrun: every rank must call it)."""
        state = None
        if self.state is not None:
            state = [self.dist.gather_rows(t).cpu() for t in self.state]
        rank_rngs = [t.cpu() for t in self.dist.gather(torch.get_rng_state().to(self.device))]
        return {
            **dataclasses.asdict(self.position),
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "config": self.config.to_dict(),
            "config_name": self.config_name,
            "vocab": vocab_list(self.corpus.vocab),
            "corpus_dir": str(self.corpus.folder) if self.corpus.custom else None,
            "state": state,
            "max_steps": self.max_steps,
            "rng": rng_state(),
            "world_size": self.dist.world_size,
            "rank_rngs": rank_rngs,  # each rank's torch generator (dropout masks)
            "versions": {"ptblm": __version__, "torch": str(torch.__version__)},
        }

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        # A process killed while saving leaves its temp file (never the checkpoint) behind.
        if self.dist.is_main:
            for stale in self.run_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.position = Position(
            **{f.name: checkpoint[f.name] for f in dataclasses.fields(Position)}
        )
        if checkpoint.get("world_size", 1) != self.dist.world_size:
            raise CheckpointError(
                f"this run was trained by {checkpoint.get('world_size', 1)} process(es); resume it "
                f"with as many (torchrun --nproc_per_node), so that it continues exactly."
            )
        if checkpoint["state"] is not None:
            first, last = self.rows
            self.state = tuple(t[:, first:last].to(self.device) for t in checkpoint["state"])
        set_rng_state(checkpoint["rng"])
        if self.dist.enabled:
            torch.set_rng_state(checkpoint["rank_rngs"][self.dist.rank])

    def save(self, name: str) -> None:
        checkpoint = self._checkpoint()
        if self.dist.is_main:
            save_checkpoint(self.run_dir / name, checkpoint)

    # --- output ----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.progress:
            tqdm.write(text, file=sys.stdout)

    # --- the loop --------------------------------------------------------------------------

    def train_window(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """One SGD step on one window; returns (the window's mean per-token NLL, grad norm)."""
        with self.autocast:
            logits, state = self.forward(x, self.state)
            loss = window_loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        # One host sync a window: the divergence guard must stop before a NaN reaches the weights.
        # Clipping keeps a huge learning rate from ever producing a NaN (the LSTM's gates saturate),
        # so a loss far beyond the untrained model's log(vocab) per token counts as divergence too.
        # Under torchrun every rank sees the same (global) loss, so all take the same decision.
        mean_nll = self.dist.sum([loss.item()], self.device)[0] / self.dist.world_size / y.size(1)
        norm = grad_norm.item()
        finite = math.isfinite(mean_nll) and math.isfinite(norm)
        if not finite and self.scaler:
            pass  # fp16 overflow: the GradScaler skips this step and lowers its scale
        elif not finite or mean_nll > DIVERGED_LOSS_FACTOR * math.log(self.config.vocab_size):
            lr = self.optimizer.param_groups[0]["lr"]
            raise DivergenceError(
                f"training diverged at step {self.position.global_step + 1} (epoch "
                f"{self.position.epoch + 1}, window {self.position.window + 1}, learning rate "
                f"{lr:g}): loss per token {mean_nll:g}, gradient norm {norm:g}. The last "
                f"checkpoint in {self.run_dir} is intact. Lower learning_rate or max_grad_norm "
                f"(--set learning_rate=...), or use --precision fp32."
            )
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips the step if the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.state = detach_state(state)
        return mean_nll, norm

    def train_epoch(self, writer, stop: StopOnSignal) -> bool:
        """Train the rest of the current epoch; False if stopped early (signal or max_steps)."""
        config, position = self.config, self.position
        lr = learning_rate_at(config, position.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if position.window == 0:
            self.state = self.model.initial_state(self.train_data.size(0), self.device)
            position.train_nll, position.train_tokens = 0.0, 0
        self.model.train()
        tokens_per_window = config.batch_size * config.num_steps  # all ranks together
        log_every = max(1, self.windows_per_epoch // LOGS_PER_EPOCH)
        logged_nll, logged_tokens, norm_sum = position.train_nll, position.train_tokens, 0.0
        interval_start = time.perf_counter()
        show_bar = self.progress and sys.stdout.isatty()
        bar = tqdm(
            total=self.windows_per_epoch,
            initial=position.window,
            desc=f"epoch {position.epoch + 1}/{config.max_max_epoch}",
            unit="win",
            file=sys.stdout,
            disable=not show_bar,
            dynamic_ncols=True,
        )
        stopped = False
        with bar:
            for x, y in windows(self.train_data, config.num_steps, start=position.window):
                if self.max_steps is not None and position.global_step >= self.max_steps:
                    stopped = True
                    break
                mean_nll, grad_norm = self.train_window(x, y)
                position.train_nll += mean_nll * tokens_per_window
                norm_sum += grad_norm
                position.window += 1
                position.global_step += 1
                position.train_tokens += tokens_per_window
                bar.update()
                reached_max = self.max_steps is not None and position.global_step >= self.max_steps
                interrupted = self.stopping(stop)
                stopped = interrupted or reached_max
                at_log = (
                    position.window % log_every == 0
                    or position.window == self.windows_per_epoch
                    or stopped
                )
                at_checkpoint = (
                    config.checkpoint_every and position.global_step % config.checkpoint_every == 0
                )
                if at_log:
                    seconds = time.perf_counter() - interval_start
                    tokens = position.train_tokens - logged_tokens
                    position.train_seconds += seconds
                    position.timed_tokens += tokens
                    loss = (position.train_nll - logged_nll) / tokens
                    ppl = perplexity(position.train_nll, position.train_tokens)
                    wps = tokens / seconds
                    step = position.global_step
                    writer.add_scalar("train/loss", loss, step)
                    writer.add_scalar("train/ppl", ppl, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar(
                        "train/grad_norm", norm_sum / (tokens // tokens_per_window), step
                    )
                    writer.add_scalar("train/wps", wps, step)
                    if show_bar:
                        bar.set_postfix(
                            loss=f"{loss:.3f}", ppl=f"{ppl:.2f}", wps=f"{wps:.0f}", lr=f"{lr:g}"
                        )
                    elif self.progress:
                        print(
                            f"epoch {position.epoch + 1} {position.window / self.windows_per_epoch:.3f} "
                            f"perplexity: {ppl:.3f} speed: {wps:.0f} wps lr: {lr:g}",
                            flush=True,
                        )
                    logged_nll, logged_tokens, norm_sum = (
                        position.train_nll,
                        position.train_tokens,
                        0.0,
                    )
                    interval_start = time.perf_counter()
                if at_checkpoint or interrupted:
                    self.save("last.pt")
                if stopped:
                    break
        return not stopped

    # --- the whole run -----------------------------------------------------------------------

    def validate(self, stop: StopOnSignal) -> float:
        """Training batch_size and num_steps, dropout off; each rank evaluates its own rows."""
        config = self.config
        nll, tokens = evaluate(
            self.model,
            self.corpus.valid,
            config.batch_size,
            config.num_steps,
            partial=False,
            row_range=self.rows,
            should_stop=stop,
        )
        return perplexity(*self.dist.sum([nll, tokens], self.device))

    def test(self, model: LSTMLanguageModel, stop: StopOnSignal) -> float:
        """The table's protocol: batch_size 1 over the whole test stream."""
        return perplexity(
            *evaluate(model, self.corpus.test, TEST_BATCH_SIZE, TEST_NUM_STEPS, should_stop=stop)
        )

    def stopping(self, stop: StopOnSignal) -> bool:
        """Has this process, or under torchrun any rank, been asked to stop? Same answer on all."""
        if self.dist.any(stop(), self.device) and not stop():
            stop.received = signal.SIGTERM  # another rank was signalled: stop together
        return stop()

    def interrupted(self, stop: StopOnSignal) -> Interrupted:
        name = signal.Signals(stop.received).name
        return Interrupted(
            f"{name} received: stopped at step {self.position.global_step} (epoch "
            f"{self.position.epoch + 1}) and saved {self.run_dir / 'last.pt'}.\n"
            f"Continue with: ptblm train --resume {self.run_dir}",
            StopOnSignal.EXIT_CODES[stop.received],
        )

    def run(self) -> dict[str, Any] | None:
        """Train to the end (or max_steps), test, write metrics.json; return the metrics
        (None on ranks other than 0, which only train)."""
        from torch.utils.tensorboard import SummaryWriter

        config, position = self.config, self.position
        metrics_file = self.run_dir / "metrics.json"
        if position.finished and metrics_file.exists():
            self.say(f"{self.run_dir} has finished already.")
            return json.loads(metrics_file.read_text())
        resumed = position.global_step > 0 or position.history
        process_start = time.perf_counter()
        wall_before = position.wall_seconds
        if self.dist.is_main:
            # On resume, TensorBoard drops what the killed process logged after the checkpoint.
            purge_step = position.global_step + 1 if resumed else None
            writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        else:
            writer = NullWriter()
        if not resumed:
            writer.add_text("config", "    " + config_to_yaml(self.config).replace("\n", "\n    "))
        with writer, StopOnSignal(exit_on_second=not self.dist.enabled) as stop:
            while not position.finished:
                if position.epoch >= config.max_max_epoch or (
                    self.max_steps is not None
                    and position.global_step >= self.max_steps
                    and position.window == 0
                ):
                    position.finished = True
                    break
                seconds_before, tokens_before = position.train_seconds, position.timed_tokens
                complete = self.train_epoch(writer, stop)
                if stop():
                    raise self.interrupted(stop)
                valid_ppl = self.validate(stop)
                if self.stopping(stop):
                    self.save("last.pt")  # the epoch's training is kept; validation reruns
                    raise self.interrupted(stop)
                train_ppl = perplexity(position.train_nll, position.train_tokens)
                seconds = position.train_seconds - seconds_before
                position.history.append(
                    {
                        "epoch": position.epoch + 1,
                        "learning_rate": learning_rate_at(config, position.epoch),
                        "windows": position.window,
                        "train_ppl": train_ppl,
                        "valid_ppl": valid_ppl,
                        "train_wps": (position.timed_tokens - tokens_before) / seconds
                        if seconds
                        else None,
                    }
                )
                writer.add_scalar("valid/ppl", valid_ppl, position.global_step)
                self.say(
                    f"Epoch {position.epoch + 1}: learning rate {learning_rate_at(config, position.epoch):g}, "
                    f"train perplexity {train_ppl:.3f}, valid perplexity {valid_ppl:.3f}"
                )
                if complete:
                    position.epoch, position.window, self.state = position.epoch + 1, 0, None
                else:
                    position.finished = True  # max_steps reached within the epoch
                position.wall_seconds = wall_before + time.perf_counter() - process_start
                if valid_ppl < position.best_valid_ppl or not (self.run_dir / "best.pt").exists():
                    position.best_valid_ppl = min(valid_ppl, position.best_valid_ppl)
                    position.best_step = position.global_step
                    self.save("best.pt")
                self.save("last.pt")
            if not position.history:
                raise DataError("no training window ran (max_steps is 0?); nothing to test.")
            if not self.dist.is_main:
                return None  # rank 0 tests and writes the results

            self.say("Testing (batch size 1, the whole test stream)...")
            test_ppl = self.test(self.model, stop)
            if position.best_step == position.global_step:
                best_test_ppl = test_ppl  # best.pt holds these very weights
            else:
                best_model = LSTMLanguageModel.from_config(config).to(self.device)
                best_model.load_state_dict(
                    torch.load(
                        self.run_dir / "best.pt", map_location=self.device, weights_only=True
                    )["model"]
                )
                best_test_ppl = self.test(best_model, stop)
            if stop():
                raise self.interrupted(stop)
            writer.add_scalar("test/ppl", test_ppl, position.global_step)
            metrics = self.metrics(
                test_ppl, best_test_ppl, wall_before + time.perf_counter() - process_start
            )
            write_hparams(writer, config, metrics)
        atomic_write(
            metrics_file,
            lambda file: file.write(json.dumps(metrics, indent=2).encode() + b"\n"),
        )
        return metrics

    def metrics(self, test_ppl: float, best_test_ppl: float, wall_seconds: float) -> dict[str, Any]:
        position = self.position
        last = position.history[-1]
        return {
            "config_name": self.config_name,
            "train_ppl": last["train_ppl"],
            "valid_ppl": last["valid_ppl"],
            "test_ppl": test_ppl,
            "best_valid_ppl": position.best_valid_ppl,
            "best_test_ppl": best_test_ppl,
            "epochs": len(position.history),
            "global_step": position.global_step,
            "train_wps": position.timed_tokens / position.train_seconds
            if position.train_seconds
            else None,
            "wall_seconds": wall_seconds,
            "device": device_description(self.device),
            "world_size": self.dist.world_size,
            "precision": self.config.precision,
            "versions": {
                "ptblm": __version__,
                "torch": str(torch.__version__),
                "python": platform.python_version(),
                "numpy": np.__version__,
            },
            "published": PUBLISHED.get(self.config_name),
            "history": position.history,
        }


class NullWriter:
    """Stands in for the SummaryWriter on ranks other than 0: only rank 0 logs."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def add_scalar(self, *args, **kwargs):
        pass

    def add_text(self, *args, **kwargs):
        pass


def write_hparams(writer, config: Config, metrics: dict[str, Any]) -> None:
    """The HParams tab entry, written into the run itself (SummaryWriter.add_hparams would make a
    separate sub-run). Its metrics are the run's own valid/ppl, test/ppl and train/ppl scalars."""
    from torch.utils.tensorboard.summary import hparams

    values = dict(config.to_dict(), config_name=metrics["config_name"] or "")
    experiment, start, end = hparams(values, {"train/ppl": 0.0, "valid/ppl": 0.0, "test/ppl": 0.0})
    file_writer = writer._get_file_writer()
    for summary in (experiment, start, end):
        file_writer.add_summary(summary)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def format_summary(metrics: dict[str, Any], run_dir: Path) -> str:
    """The final table row, beside the published one when there is one."""
    published = metrics.get("published")
    lines = [
        f"{'':>10} {'train':>8} {'valid':>8} {'test':>8}",
        f"{'ptblm':>10} {metrics['train_ppl']:8.2f} {metrics['valid_ppl']:8.2f} {metrics['test_ppl']:8.2f}"
        f"   ({metrics['epochs']} epochs, {metrics['wall_seconds'] / 60:.1f} min, "
        f"{metrics['train_wps'] or 0:.0f} words/s, {metrics['device']})",
    ]
    if published:
        lines.append(
            f"{'published':>10} {published['train']:8.2f} {published['valid']:8.2f} {published['test']:8.2f}"
        )
    lines.append(
        f"best.pt: valid {metrics['best_valid_ppl']:.2f}, test {metrics['best_test_ppl']:.2f}.  "
        f"Run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})"
    )
    return "\n".join(lines)


def command_line() -> str:
    return shlex.join(["ptblm", *sys.argv[1:]])
