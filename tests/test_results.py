"""What `ptblm train` prints at the end: the run's row beside the published one, or why the two
cannot be compared. The expected lines are written out by hand."""

from pathlib import Path

from ptblm.results import format_summary

PUBLISHED_SMALL = {"config": "small", "train": 40.8, "valid": 119.98, "test": 115.91}
RUN_DIR = Path("runs/small-1")


def metrics(**changes):
    finished = {
        "train_ppl": 40.33,
        "valid_ppl": 118.79,
        "test_ppl": 114.274,
        "best_valid_ppl": 118.79,
        "best_test_ppl": 114.618,
        "train_wps": 7442.4,
        "wall_seconds": 1680.0,
        "epochs_trained": 13.0,
        "epochs": 13,
        "device": "cpu: 2 threads",
        "published": PUBLISHED_SMALL,
        "variant": {},
    }
    return {**finished, **changes}


def test_a_full_run_stands_beside_the_published_row():
    assert format_summary(metrics(), RUN_DIR).splitlines() == [
        "              train    valid     test",
        "     ptblm    40.33   118.79   114.27   (13 epochs, 28.0 min, 7442 words/s, cpu: 2 threads)",
        " published    40.80   119.98   115.91   (the tutorial's small row)",
        "best.pt: valid 118.79, test 114.62.  Run directory: runs/small-1  (tensorboard --logdir runs)",
    ]


def test_a_variant_says_what_its_model_adds():
    text = format_summary(metrics(variant={"tie_weights": True}), RUN_DIR)
    assert "(the tutorial's small row; this run's model adds tie_weights: True)" in text


def test_a_run_cut_short_is_not_compared():
    text = format_summary(
        metrics(cut_short=True, max_steps=200, epochs_trained=0.15, best_test_ppl=None), RUN_DIR
    )
    lines = text.splitlines()
    assert lines[1].endswith("(0.15 epochs, 28.0 min, 7442 words/s, cpu: 2 threads)")
    assert lines[2] == (
        "Cut short by --max-steps 200 after 0.15 epochs: not comparable with the published "
        "small row."
    )
    assert not any(line.startswith(" published") for line in lines)
    assert "best.pt: valid 118.79, test inf." in text  # null in metrics.json: inf or NaN


def test_a_run_tested_on_a_prefix_says_so():
    text = format_summary(metrics(eval_tokens=5000, published=None), RUN_DIR)
    assert (
        "Validated and tested on the first 5,000 tokens of each split (--eval-tokens): not "
        "comparable with the table." in text
    )
    assert "published" not in text and len(text.splitlines()) == 4


def test_threads_that_followed_the_load_are_said():
    varied = {"1": 310, "2": 12_705}
    text = format_summary(metrics(threads="auto", windows_by_threads=varied), RUN_DIR)
    assert (
        "CPU threads followed the machine's load (windows trained: 2 for 12,705, 1 for 310): a "
        "sum over another count rounds differently, so a run repeats to the last digit only "
        "with one --threads N."
    ) in text.splitlines()
    resumed = format_summary(metrics(threads=2, windows_by_threads=varied), RUN_DIR)
    assert "CPU threads changed between its resumes (windows trained: 2 for 12,705" in resumed
    for alone in ({"2": 13_015}, {}):
        assert "threads followed" not in format_summary(metrics(windows_by_threads=alone), RUN_DIR)
    on_gpu = metrics(windows_by_threads={"1": 310, "2": 12_705}, device="cuda: NVIDIA H200")
    assert "threads followed" not in format_summary(on_gpu, RUN_DIR)
