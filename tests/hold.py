"""`python tests/hold.py ARGS...` runs `ptblm ARGS...` with hold points, so that a test can kill
or signal the run at an exact place in its course instead of after a sleep.

PTBLM_HOLD is a comma-separated list of points, held in the order given:
    step:N          before the training step runs for the (N+1)-th time (N windows done)
    before:FILE:K   before the K-th write of FILE (last.pt or best.pt)
    after:FILE:K    right after the K-th write of FILE
    validate:K      at the start of the K-th validation
At the i-th point the process creates $PTBLM_HOLD_DIR/held-i, then waits, napping so that signals
are handled, until the test creates $PTBLM_HOLD_DIR/release-i.
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
seen = collections.Counter()


def at(point: str) -> None:
    if point in POINTS:
        index = POINTS.index(point)
        (HOLD_DIR / f"held-{index}").touch()
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


def wrap_validate(validate):
    def validating(self, stop):
        seen["validate"] += 1
        at(f"validate:{seen['validate']}")
        return validate(self, stop)

    return validating


EagerStep.__call__ = wrap_step(EagerStep.__call__)
Trainer.save = wrap_save(Trainer.save)
Trainer.validate = wrap_validate(Trainer.validate)
sys.argv = ["ptblm", *sys.argv[1:]]
main()
