"""`python tests/hold.py ARGS...` runs `ptblm ARGS...` with hold points, so that a test can kill
or signal the run at an exact place in its course instead of after a sleep.

PTBLM_HOLD is a comma-separated list of points, held in the order given:
    step:N          before the training step runs for the (N+1)-th time (N windows done)
    before:FILE:K   before the K-th write of FILE (last.pt or best.pt)
    after:FILE:K    right after the K-th write of FILE
    validate:K      at the start of the K-th validation
    test:K          at the start of the K-th test pass (1: the final model, 2: best.pt's)
At the i-th point the process writes its PID into $PTBLM_HOLD_DIR/held-i, then waits, napping so
that signals are handled, until the test creates $PTBLM_HOLD_DIR/release-i.

Under torchrun (`torchrun ... tests/hold.py ARGS...`) every rank counts the points; with
PTBLM_HOLD_RANK=R only rank R holds at them (the others run on, and wait in the collectives).
"""

import collections
import os
import sys
import time
from pathlib import Path

from ptblm.cli import main
from ptblm.step import EagerStep
from ptblm.train import Trainer

HOLD_DIR = Path(os.environ["PTBLM_HOLD_DIR"])
POINTS = os.environ["PTBLM_HOLD"].split(",")
HOLDS_HERE = os.environ.get("PTBLM_HOLD_RANK", os.environ.get("RANK", "0")) == os.environ.get(
    "RANK", "0"
)
seen = collections.Counter()


def at(point: str) -> None:
    if HOLDS_HERE and point in POINTS:
        index = POINTS.index(point)
        held = HOLD_DIR / f"held-{index}"
        partial = HOLD_DIR / f".held-{index}.tmp"
        partial.write_text(str(os.getpid()))
        partial.rename(held)  # the test never reads a half-written PID
        while not (HOLD_DIR / f"release-{index}").exists():
            time.sleep(0.01)


def wrap_step(call):
    def step(self, x, y):
        seen["step"] += 1
        at(f"step:{seen['step'] - 1}")
        return call(self, x, y)

    return step


def wrap_save(save):
    def saving(self, name):
        seen[name] += 1
        at(f"before:{name}:{seen[name]}")
        save(self, name)
        at(f"after:{name}:{seen[name]}")

    return saving


def wrap_counted(name, method):
    """Hold at `name:K` at the start of the K-th call of a Trainer method."""

    def counted(self, *args):
        seen[name] += 1
        at(f"{name}:{seen[name]}")
        return method(self, *args)

    return counted


EagerStep.__call__ = wrap_step(EagerStep.__call__)
Trainer.save = wrap_save(Trainer.save)
Trainer.validate = wrap_counted("validate", Trainer.validate)
Trainer.test = wrap_counted("test", Trainer.test)
sys.argv = ["ptblm", *sys.argv[1:]]
main()
