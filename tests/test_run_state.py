import math

import pytest

from ptblm.run_state import RunState

TOKENS = 20 * 35  # one window of small


def test_an_interval_reports_its_own_windows_and_the_epochs_perplexity():
    run = RunState()
    run.add_windows([(5.0, 2.0), (4.0, 4.0)], TOKENS)
    first = run.close_interval(2.0, TOKENS, 2)
    assert first == pytest.approx(
        {"loss": 4.5, "ppl": math.exp(4.5), "grad_norm": 3.0, "wps": 2 * TOKENS / 2.0}
    )
    run.add_windows([(3.0, 1.0)], TOKENS)
    assert run.interval_tokens() == TOKENS
    second = run.close_interval(0.5, TOKENS, 1)
    # loss and gradient norm of the new window only; perplexity over the epoch so far
    assert second == pytest.approx(
        {"loss": 3.0, "ppl": math.exp(4.0), "grad_norm": 1.0, "wps": TOKENS / 0.5}
    )
    assert (run.train_seconds, run.timed_tokens) == (2.5, 3 * TOKENS)
    assert run.windows_by_threads == {"2": 2, "1": 1}
    run.start_epoch()
    assert (run.train_nll, run.train_tokens, run.interval_tokens(), run.norm_sum) == (0, 0, 0, 0)
    assert run.timed_tokens == 3 * TOKENS  # the clock runs across epochs


def test_time_banked_at_a_checkpoint_counts_after_a_resume():
    """Windows trained between a log point and a stop were timed at 0 s after the resume: the
    first speed shown was about 20x the real one, and train_wps too high."""
    run = RunState()
    run.add_windows([(5.0, 2.0)] * 3, TOKENS)
    run.bank_interval_time(3.0)  # before the checkpoint is written
    resumed = RunState.from_checkpoint(run.to_dict())
    assert resumed.interval_wps(1.0) == pytest.approx(3 * TOKENS / 4.0)
    resumed.add_windows([(5.0, 2.0)], TOKENS)
    assert resumed.close_interval(1.0, TOKENS, 2)["wps"] == pytest.approx(4 * TOKENS / 4.0)
    assert (resumed.train_seconds, resumed.interval_seconds) == (4.0, 0.0)
    assert resumed.windows_by_threads == {"2": 4}
    older = run.to_dict()
    for name in ("interval_seconds", "windows_by_threads"):
        del older[name]  # a checkpoint of an older ptblm
    first, second = RunState.from_checkpoint(older), RunState.from_checkpoint(older)
    assert first.interval_seconds == 0.0 and first.windows_by_threads == {}
    first.close_interval(1.0, TOKENS, 2)
    assert second.windows_by_threads == {}  # each state its own


def test_end_epoch_moves_on_keeps_the_best_and_finishes_after_the_last_epoch():
    run = RunState()
    for epoch, valid_ppl in enumerate([200.0, 150.0, 160.0]):
        run.add_windows([(5.0, 1.0)] * 10, TOKENS)
        run.window, run.global_step = 10, run.global_step + 10
        best = run.end_epoch(1.0, valid_ppl, complete=True, epochs=3, windows_per_epoch=10)
        assert best == (valid_ppl != 160.0)
        assert (run.epoch, run.window) == (epoch + 1, 0)
        assert run.finished == (epoch == 2)
        run.start_epoch()
    assert (run.best_valid_ppl, run.best_step) == (150.0, 20)
    assert [entry["valid_ppl"] for entry in run.history] == [200.0, 150.0, 160.0]
    assert run.history[0] == pytest.approx(
        {
            "epoch": 1,
            "learning_rate": 1.0,
            "windows": 10,
            "train_ppl": math.exp(5.0),
            "valid_ppl": 200.0,
        }
    )


def test_max_steps_ends_the_run_inside_an_epoch():
    run = RunState(max_steps=25)
    assert run.windows_left(10) == 10
    run.epoch, run.global_step = 2, 20
    assert run.windows_left(10) == 5  # --max-steps comes before the epoch's end
    run.window, run.global_step = 5, 25
    assert run.windows_left(10) == 0
    run.add_windows([(5.0, 1.0)] * 5, TOKENS)
    assert run.end_epoch(1.0, 100.0, complete=False, epochs=39, windows_per_epoch=10) is True
    assert (run.epoch, run.window, run.finished) == (2, 5, True)  # resuming tests only
    assert run.history[-1]["windows"] == 5


def test_an_fp16_interval_whose_gradient_overflowed_still_resumes():
    """Under fp16 the GradScaler skips a window whose gradient norm is inf (or NaN): the sum of
    the interval's norms saved in a checkpoint may be so, and must not stop a resume."""
    run = RunState()
    run.add_windows([(5.0, float("inf")), (4.0, float("nan"))], TOKENS)
    assert math.isnan(RunState.from_checkpoint(run.to_dict()).norm_sum)


def test_the_published_row_stands_beside_runs_on_ptb_only():
    """A run of the small config on a corpus of one's own is no reproduction of the small row."""
    from ptblm.config import load_config

    small = load_config("small")
    on_ptb = RunState("small").summary("stopped", small, 2323)
    assert on_ptb["published"]["config"] == "small" and on_ptb["published"]["test"] == 115.91
    assert RunState("small").summary("stopped", small, 2323, on_ptb=False)["published"] is None
