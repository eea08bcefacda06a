"""The training loop: REFERENCE.md's "Training", top to bottom.

One window of truncated BPTT:
    logits, state = model(x, state)                    state carried from the previous window
    loss = sum over steps of batch-mean cross-entropy  (NOT the mean over tokens: see window_loss)
    loss.backward(); clip all gradients to global norm max_grad_norm; SGD step at the epoch's lr
    state = state.detach()                             values carried, gradients cut

Per epoch: lr = learning_rate * lr_decay ** max(epoch + 1 - max_epoch, 0), the state starts at
zero, then validation (training batch_size and num_steps, dropout off). At the end: test with
the table's protocol (batch_size 1, the whole stream), for the final model and for best.pt.

Everything a run writes lives in its run directory (see README, "The run directory"); under
torchrun only rank 0 prints, logs and saves.
"""

from __future__ import annotations

import contextlib
import ctypes
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
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    vocab_list,
)
from ptblm.config import TUTORIAL_FIELDS, Config, config_to_yaml, load_config
from ptblm.data import Corpus, batchify, num_windows, windows
from ptblm.distributed import SINGLE_PROCESS, Distributed
from ptblm.errors import CheckpointError, ConfigError, DataError, DivergenceError, Interrupted
from ptblm.evaluate import (
    TEST_BATCH_SIZE,
    TEST_NUM_STEPS,
    evaluate,
    model_from_checkpoint,
    perplexity,
)
from ptblm.model import LSTMLanguageModel, configure_tf32, detach_state, window_loss

# The published rows (REFERENCE.md, the tutorial's table), shown beside a run of that config.
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


def published_row(config: Config) -> tuple[str, dict[str, float]] | None:
    """The published (name, row) whose config has the same tutorial fields, if any."""
    for name, row in PUBLISHED.items():
        shipped = load_config(name)
        if all(getattr(config, key) == getattr(shipped, key) for key in TUTORIAL_FIELDS):
            return name, row
    return None


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when present), cpu, cuda or cuda:N; anything else is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here. Use --device cpu or auto.")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}."
        )
    return torch.device(name)


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed large blocks instead of returning them to the OS.

    Every window allocates the same few large tensors (small: 16 MB of logits and their
    gradients) and frees them again. By default glibc serves blocks above 128 KB with mmap and
    unmaps them on free, so each window page-faults its buffers back in and zero-fills them;
    on the 2-core CPU this was a fifth of a bf16 window. Raising the mmap and trim thresholds
    to 1 GiB keeps them in the heap (the process keeps its peak memory). Changes no number;
    a no-op where the C library is not glibc. Called by `ptblm train` and the benchmark, not
    on import.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a combination that would otherwise fall back silently."""
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("precision fp16 needs a CUDA device; on the CPU use bf16 (or fp32).")
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{torch.cuda.get_device_name(device)} has no bf16; use fp16 or fp32.")


def autocast_context(precision: str, device: torch.device):
    """fp32: nothing. bf16/fp16: autocast for the model (the loss is computed in fp32 anyway).

    On CUDA, autocast runs cuDNN LSTMs in fp16 whatever dtype is asked for, so both bf16 and
    fp16 there use a GradScaler (see make_scaler). On the CPU only bf16 is supported.
    """
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    if device.type == "cuda" and precision != "fp32":
        return torch.amp.GradScaler("cuda")
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Position:
    """Where a run stands; saved in every checkpoint so that a resumed run continues exactly."""

    epoch: int = 0  # 0-based epoch of the next window
    window: int = 0  # index in that epoch of the next window (0: epoch boundary)
    global_step: int = 0  # training windows done in total
    train_nll: float = 0.0  # this epoch's summed training NLL so far (nats, all ranks)
    train_tokens: int = 0
    logged_nll: float = 0.0  # train_nll, train_tokens at the last log line, and the gradient
    logged_tokens: int = 0  # norms summed since: so the next log line covers the same windows
    norm_sum: float = 0.0  # as in an uninterrupted run
    best_valid_ppl: float = math.inf
    best_step: int = -1  # global_step of best.pt (-1: none yet)
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False  # training done; only the final test (and metrics) remain
    train_seconds: float = 0.0  # time spent in training windows (evaluation excluded)
    timed_tokens: int = 0  # training tokens processed in that time
    wall_seconds: float = 0.0  # wall-clock time of the run so far, across resumes


class StopOnSignal:
    """First SIGINT/SIGTERM: ask the loop to stop after the current window (it saves last.pt).
    A second SIGINT: leave at once; every file is written atomically, so nothing is corrupted.
    Further SIGTERMs are ignored: a preempting scheduler may send several.

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


class NullWriter:
    """Stands in for the SummaryWriter where nothing is logged (ranks other than 0, benchmarks)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def add_scalar(self, *args, **kwargs):
        pass

    def add_text(self, *args, **kwargs):
        pass

    def flush(self):
        pass


class Trainer:
    """One run: `Trainer(...)` builds or restores it, `run()` trains, tests and writes it."""

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
        dist: Distributed = SINGLE_PROCESS,
    ):
        self.config = config
        self.corpus = corpus
        self.run_dir = Path(run_dir)
        self.device = device
        self.max_steps = max_steps
        self.command = command
        self.config_name = config_name
        self.dist = dist
        self.progress = progress and dist.is_main
        self._check_sizes()
        if device.type == "cuda":
            configure_tf32(config.allow_tf32)
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
        rows_of_text = batchify(corpus.train, config.batch_size)
        self.train_data = rows_of_text[self.rows[0] : self.rows[1]].to(device)
        self.windows_per_epoch = num_windows(self.train_data.size(1), config.num_steps)
        self.position = Position()
        self.state = None
        self._lock = None
        if resume is not None:
            self._lock_run_dir()
            self._restore(resume)
        else:
            self._create_run_dir()
        self._process_start = time.perf_counter()
        self._wall_before = self.position.wall_seconds

    def _check_sizes(self) -> None:
        """Refuse, before any training, a corpus that does not fit the config."""
        config, corpus = self.config, self.corpus
        if config.batch_size % self.dist.world_size:
            raise ConfigError(
                f"batch_size {config.batch_size} does not divide by the {self.dist.world_size} "
                f"processes: each trains an equal share of the rows. Use --set batch_size=N with "
                f"N a multiple of {self.dist.world_size}, or another --nproc_per_node."
            )
        if len(corpus.vocab) != config.vocab_size:
            raise DataError(
                f"the training split of {corpus.folder} has {len(corpus.vocab)} distinct words but "
                f"vocab_size is {config.vocab_size}. Use --set vocab_size={len(corpus.vocab)}."
            )
        for split, batch_size, num_steps in (
            ("train", config.batch_size, config.num_steps),
            ("valid", config.batch_size, config.num_steps),
            ("test", TEST_BATCH_SIZE, 1),
        ):
            ids = corpus.split(split)
            if ids.numel() // batch_size < num_steps + 1:
                raise DataError(
                    f"the {split} split of {corpus.folder} has {ids.numel()} tokens: too few for "
                    f"one window of batch_size {batch_size} x num_steps {num_steps}."
                )

    # --- run directory and checkpoints ---------------------------------------------------

    def _create_run_dir(self) -> None:
        """Rank 0 creates the run directory and config.yaml; no rank trains on if that fails."""
        failure = None
        if self.dist.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=False)
                self._lock_run_dir()
                header = (
                    f"Resolved config of this run (ptblm {__version__}), written by:\n"
                    f"  {self.command}\n"
                    f"Train again with: ptblm train --config {self.run_dir / 'config.yaml'}"
                )
                text = config_to_yaml(self.config, header).encode()
                atomic_write(self.run_dir / "config.yaml", lambda file: file.write(text))
            except FileExistsError:
                failure = ConfigError(
                    f"{self.run_dir} already exists. Choose another --name, or continue it with "
                    f"ptblm train --resume {self.run_dir}."
                )
            except OSError as error:
                failure = DataError(
                    f"cannot create the run directory {self.run_dir} ({error.strerror}). "
                    f"Choose a writable one with --runs-dir DIR."
                )
        if self.dist.any(failure is not None, self.device):
            raise failure or DataError("rank 0 could not create the run directory.")

    def _lock_run_dir(self) -> None:
        """One process trains a run directory at a time (a second --resume is refused)."""
        if not self.dist.is_main:
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        self._lock = open(self.run_dir / ".lock", "w")  # noqa: SIM115 (held for the whole run)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"another ptblm process is training {self.run_dir}; wait for it or stop it first."
            ) from None

    def _checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict (a collective under torchrun: every rank must call it)."""
        state = None
        if self.state is not None:
            state = [torch.cat(self.dist.gather(t), dim=1).cpu() for t in self.state]
        rank_rngs = [t.cpu() for t in self.dist.gather(torch.get_rng_state().to(self.device))]
        if self.device.type == "cuda":
            rank_rngs += [
                t.cpu()
                for t in self.dist.gather(torch.cuda.get_rng_state(self.device).to(self.device))
            ]
        return {
            **dataclasses.asdict(self.position),
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "config": self.config.to_dict(),
            "config_name": self.config_name,
            "vocab": vocab_list(self.corpus.vocab),
            "corpus_dir": str(self.corpus.folder.resolve()) if self.corpus.custom else None,
            "state": state,
            "max_steps": self.max_steps,
            "world_size": self.dist.world_size,
            "rng": rng_state(),
            "rank_rngs": rank_rngs,
            "versions": {"ptblm": __version__, "torch": str(torch.__version__)},
        }

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("world_size", 1) != self.dist.world_size:
            raise CheckpointError(
                f"this run was trained by {checkpoint.get('world_size', 1)} process(es); resume it "
                f"with as many (torchrun --nproc_per_node), so that it continues exactly."
            )
        # A process killed while saving leaves its temp file (never the checkpoint) behind.
        if self.dist.is_main:
            for stale in self.run_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.scaler and checkpoint["scaler"]:
                self.scaler.load_state_dict(checkpoint["scaler"])
            fields = dataclasses.fields(Position)
            self.position = Position(**{f.name: checkpoint[f.name] for f in fields})
            if checkpoint["state"] is not None:
                first, last = self.rows
                self.state = tuple(t[:, first:last].to(self.device) for t in checkpoint["state"])
                if self.state[0].shape != (
                    self.config.num_layers,
                    last - first,
                    self.config.hidden_size,
                ):
                    raise ValueError(f"carried state of shape {tuple(self.state[0].shape)}")
            set_rng_state(checkpoint["rng"])
            if self.dist.enabled:
                rngs = checkpoint["rank_rngs"]
                torch.set_rng_state(rngs[self.dist.rank])
                if self.device.type == "cuda":
                    torch.cuda.set_rng_state(
                        rngs[self.dist.world_size + self.dist.rank], self.device
                    )
        except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as error:
            detail = (
                f"missing {error}" if isinstance(error, KeyError) else str(error).splitlines()[0]
            )
            raise CheckpointError(
                f"{self.run_dir / 'last.pt'} cannot be resumed ({detail[:200]}): it is damaged or "
                f"was written by another version. Start a new run."
            ) from None

    def save(self, name: str) -> None:
        self.position.wall_seconds = self._wall_before + time.perf_counter() - self._process_start
        checkpoint = self._checkpoint()
        if self.dist.is_main:
            save_checkpoint(self.run_dir / name, checkpoint)

    def say(self, text: str) -> None:
        if self.progress:
            tqdm.write(text, file=sys.stdout)

    # --- the loop --------------------------------------------------------------------------

    def train_window(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """One SGD step on one window (x, y: (rows, num_steps)); returns the window's mean
        per-token NLL over all ranks and the gradient norm before clipping."""
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
        # One read-back a window, for the divergence guard: it must stop before a bad step
        # reaches the weights. Under torchrun the gradients (so the norm) are the same on every
        # rank and the loss is summed, so all ranks take the same decision.
        window_nll, norm = torch.stack([loss.detach().float(), grad_norm.float()]).tolist()
        window_nll = self.dist.sum([window_nll], self.device)[0] / self.dist.world_size
        mean_nll = window_nll / y.size(1)
        # A huge learning rate saturates the LSTM's gates before anything becomes NaN, so a
        # loss far beyond the untrained model's log(vocab) per token counts as divergence too.
        # With fp16 a non-finite gradient is an overflow the GradScaler skips, not divergence.
        bound = DIVERGED_LOSS_FACTOR * math.log(self.config.vocab_size)
        if not (math.isfinite(mean_nll) and mean_nll <= bound) or (
            not math.isfinite(norm) and not self.scaler
        ):
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

    def train_epoch(self, writer, stop: StopOnSignal) -> str:
        """Train the rest of the current epoch. Returns why it ended: "complete", "max_steps",
        or "interrupted" (a signal on any rank; last.pt is saved)."""
        config, position = self.config, self.position
        lr = learning_rate_at(config, position.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if position.window == 0:
            self.state = self.model.initial_state(self.train_data.size(0), self.device)
            position.train_nll = position.logged_nll = position.norm_sum = 0.0
            position.train_tokens = position.logged_tokens = 0
        self.model.train()
        tokens_per_window = config.batch_size * config.num_steps  # all ranks together
        log_every = max(1, self.windows_per_epoch // LOGS_PER_EPOCH)
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
        with bar:
            for x, y in windows(self.train_data, config.num_steps, start=position.window):
                if self.max_steps is not None and position.global_step >= self.max_steps:
                    return "max_steps"
                mean_nll, grad_norm = self.train_window(x, y)
                position.train_nll += mean_nll * tokens_per_window
                position.train_tokens += tokens_per_window
                position.norm_sum += grad_norm
                position.window += 1
                position.global_step += 1
                bar.update()
                reached_max = self.max_steps is not None and position.global_step >= self.max_steps
                epoch_end = position.window == self.windows_per_epoch
                if position.window % log_every == 0 or epoch_end or reached_max:
                    seconds = time.perf_counter() - interval_start
                    self.log_interval(writer, bar, lr, seconds)
                    interval_start = time.perf_counter()
                # At the epoch's end last.pt is written after validation instead.
                if config.checkpoint_every and not epoch_end:
                    if position.global_step % config.checkpoint_every == 0:
                        saving = time.perf_counter()
                        writer.flush()  # what TensorBoard shows reaches the disk with it
                        self.save("last.pt")
                        interval_start += time.perf_counter() - saving  # not training time
                if self.stopping(stop):
                    writer.flush()
                    self.save("last.pt")
                    return "interrupted"
                if reached_max:
                    return "max_steps"
        return "complete"

    def log_interval(self, writer, bar, lr: float, seconds: float) -> None:
        """TensorBoard scalars and the progress bar or line for the windows since the last one."""
        position = self.position
        tokens_per_window = self.config.batch_size * self.config.num_steps
        tokens = position.train_tokens - position.logged_tokens
        position.train_seconds += seconds
        position.timed_tokens += tokens
        loss = (position.train_nll - position.logged_nll) / tokens
        ppl = perplexity(position.train_nll, position.train_tokens)
        wps = tokens / seconds
        step = position.global_step
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/ppl", ppl, step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar(
            "train/grad_norm", position.norm_sum / (tokens // tokens_per_window), step
        )
        writer.add_scalar("train/wps", wps, step)
        if not bar.disable:
            bar.set_postfix(loss=f"{loss:.3f}", ppl=f"{ppl:.2f}", wps=f"{wps:.0f}", lr=f"{lr:g}")
        elif self.progress:
            print(
                f"epoch {position.epoch + 1} {position.window / self.windows_per_epoch:.3f} "
                f"perplexity: {ppl:.3f} speed: {wps:.0f} wps lr: {lr:g}",
                flush=True,
            )
        position.logged_nll, position.logged_tokens = position.train_nll, position.train_tokens
        position.norm_sum = 0.0

    def validate(self, stop: StopOnSignal) -> float:
        """Training batch_size and num_steps, dropout off; each rank evaluates its own rows."""
        config = self.config
        nll, tokens = evaluate(
            self.model,
            self.corpus.valid,
            config.batch_size,
            config.num_steps,
            row_range=self.rows,
            should_stop=stop,
        )
        return perplexity(*self.dist.sum([nll, tokens], self.device))

    def test(self, model: LSTMLanguageModel, stop: StopOnSignal) -> float:
        """The table's protocol: batch_size 1 over the whole test stream."""
        nll, tokens = evaluate(
            model, self.corpus.test, TEST_BATCH_SIZE, TEST_NUM_STEPS, should_stop=stop
        )
        return perplexity(nll, tokens)

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

    # --- the whole run -----------------------------------------------------------------------

    def run(self) -> dict[str, Any] | None:
        """Train to the end (or max_steps), test, write metrics.json; return the metrics
        (None on ranks other than 0, which only train)."""
        from torch.utils.tensorboard import SummaryWriter

        config, position = self.config, self.position
        metrics_file = self.run_dir / "metrics.json"
        if position.finished and metrics_file.exists():
            with contextlib.suppress(OSError, ValueError):
                metrics = json.loads(metrics_file.read_text())
                self.say(f"{self.run_dir} has finished already.")
                return metrics
        resumed = position.global_step > 0
        if self.dist.is_main:
            # On resume, TensorBoard drops what the stopped process logged after the checkpoint.
            writer = SummaryWriter(
                str(self.run_dir), purge_step=position.global_step + 1 if resumed else None
            )
            if not resumed:
                writer.add_text("config", "    " + config_to_yaml(config).replace("\n", "\n    "))
        else:
            writer = NullWriter()
        with writer, StopOnSignal(exit_on_second=not self.dist.enabled) as stop:
            while not position.finished:
                ended = self.train_epoch(writer, stop)
                if ended == "interrupted":
                    raise self.interrupted(stop)
                valid_ppl = self.validate(stop)
                if self.stopping(stop):
                    self.save("last.pt")  # the epoch's training is kept; validation reruns
                    raise self.interrupted(stop)
                train_ppl = perplexity(position.train_nll, position.train_tokens)
                lr = self.optimizer.param_groups[0]["lr"]
                position.history.append(
                    {
                        "epoch": position.epoch + 1,
                        "learning_rate": lr,
                        "windows": position.window,
                        "train_ppl": train_ppl,
                        "valid_ppl": valid_ppl,
                    }
                )
                writer.add_scalar("valid/ppl", valid_ppl, position.global_step)
                self.say(
                    f"Epoch {position.epoch + 1}: learning rate {lr:g}, train perplexity "
                    f"{train_ppl:.3f}, valid perplexity {valid_ppl:.3f}"
                )
                if ended == "complete":
                    position.epoch, position.window, self.state = position.epoch + 1, 0, None
                position.finished = (
                    ended == "max_steps"
                    or position.epoch >= config.max_max_epoch
                    or (self.max_steps is not None and position.global_step >= self.max_steps)
                )
                if position.best_step < 0 or valid_ppl < position.best_valid_ppl:
                    position.best_valid_ppl, position.best_step = valid_ppl, position.global_step
                    self.save("best.pt")
                self.save("last.pt")
                writer.flush()
            if not self.dist.is_main:
                return None  # rank 0 tests and writes the results

            self.say("Testing (batch size 1, the whole test stream)...")
            test_ppl = self.test(self.model, stop)
            if position.best_step == position.global_step:
                best_test_ppl = test_ppl  # best.pt holds these very weights
            else:
                best = self.run_dir / "best.pt"
                best_model = model_from_checkpoint(load_checkpoint(best), best).to(self.device)
                best_test_ppl = self.test(best_model, stop)
            if stop():
                raise self.interrupted(stop)  # last.pt is final: resuming only tests again
            writer.add_scalar("test/ppl", test_ppl, position.global_step)
            metrics = self.metrics(test_ppl, best_test_ppl)
            write_hparams(writer, config, metrics)
        text = json.dumps(metrics, indent=2).encode() + b"\n"
        try:
            atomic_write(metrics_file, lambda file: file.write(text))
        except OSError as error:
            raise CheckpointError(
                f"could not write {metrics_file} ({error.strerror}); the checkpoints are saved: "
                f"free some space, then ptblm train --resume {self.run_dir} writes it."
            ) from None
        return metrics

    def metrics(self, test_ppl: float, best_test_ppl: float) -> dict[str, Any]:
        position = self.position
        last = position.history[-1]
        published = published_row(self.config)
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
            "wall_seconds": self._wall_before + time.perf_counter() - self._process_start,
            "device": device_description(self.device),
            "world_size": self.dist.world_size,
            "precision": self.config.precision,
            "versions": {
                "ptblm": __version__,
                "torch": str(torch.__version__),
                "python": platform.python_version(),
                "numpy": np.__version__,
            },
            "published": None if published is None else {"config": published[0], **published[1]},
            "history": position.history,
        }


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
    return f"cpu: {platform.machine()}, {torch.get_num_threads()} threads"


def format_summary(metrics: dict[str, Any], run_dir: Path) -> str:
    """The final table row, beside the published one when the config is a published one."""
    published = metrics.get("published")
    wps = metrics["train_wps"] or 0
    lines = [
        f"{'':>10} {'train':>8} {'valid':>8} {'test':>8}",
        f"{'ptblm':>10} {metrics['train_ppl']:8.2f} {metrics['valid_ppl']:8.2f} "
        f"{metrics['test_ppl']:8.2f}   ({metrics['epochs']} epochs, "
        f"{metrics['wall_seconds'] / 60:.1f} min, {wps:.0f} words/s, {metrics['device']})",
    ]
    if published:
        lines.append(
            f"{'published':>10} {published['train']:8.2f} {published['valid']:8.2f} "
            f"{published['test']:8.2f}   (the tutorial's {published['config']} row)"
        )
    lines.append(
        f"best.pt: valid {metrics['best_valid_ppl']:.2f}, test {metrics['best_test_ppl']:.2f}.  "
        f"Run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})"
    )
    return "\n".join(lines)


def command_line() -> str:
    return shlex.join(["ptblm", *sys.argv[1:]])
