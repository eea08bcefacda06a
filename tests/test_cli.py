"""The real `ptblm` command, run as a user would (python -m ptblm in a subprocess)."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import (
    LOCAL_WITHOUT_PROXY,
    assert_clean_failure,
    cpu_has_native_bf16_by_its_flags,
    dead_url,
    make_corpus,
    ptblm,
)

from ptblm.config import load_config

REPO = Path(__file__).resolve().parents[1]
TAGS = [
    "train/loss",
    "train/ppl",
    "train/lr",
    "train/grad_norm",
    "train/wps",
    "train/top_silent",
    "train/top_max_cell",
    "valid/ppl",
    "test/ppl",
]


def test_help_and_version():
    result = ptblm("--help")
    assert result.returncode == 0
    for command in ("download", "info", "train", "eval", "generate", "runs", "config"):
        assert f"\n  {command} " in result.stdout
    assert "..." not in result.stdout.split("Commands:")[1]  # no command's help cut short
    for command in (["train"], ["eval"], ["generate"], ["runs"], ["config", "show"]):
        shown = ptblm(*command, "--help").stdout
        assert "<" not in shown.replace("<eos>", "").replace("<unk>", ""), shown  # no <int range>
    result = ptblm("--version")
    assert result.returncode == 0 and result.stdout.startswith("ptblm ")


def test_config_show_prints_the_resolved_config_with_overrides(tmp_path):
    result = ptblm("config", "show", "small", "--set", "learning_rate=0.5", "--set", "seed=7")
    assert result.returncode == 0, result.stderr
    values = yaml.safe_load(result.stdout)
    assert values["learning_rate"] == 0.5 and values["seed"] == 7 and values["hidden_size"] == 200
    path = tmp_path / "shown.yaml"
    path.write_text(result.stdout)
    assert load_config(str(path)) == load_config("small", ["learning_rate=0.5", "seed=7"])


@pytest.mark.parametrize(
    "yaml_text, args, fragments",
    [
        (None, ["--config", "tiny"], ["unknown config 'tiny'", "small"]),
        ("init_scale: [0.1\n", [], ["malformed YAML", "line"]),
        (
            "init_scale: 0.1\nlearning_rate: 1\ninit_scale: 0.2\n",
            [],
            ["at line 3", "'init_scale' on lines 1, 3", "keep one"],
        ),
        ("{}", ["--set", "bogus=1"], ["unknown key 'bogus'"]),
        (
            None,
            ["--config", "small", "--set", "hidden_size=big"],
            ["'hidden_size' must be an integer"],
        ),
        (None, ["--config", "small", "--set", "keep_prob=1.5"], ["'keep_prob' is 1.5", "(0, 1]"]),
        (None, ["--config", "small", "--set", "colour=red"], ["unknown key 'colour'"]),
        (None, ["--config", "small", "--precision", "fp64"], ["--precision fp64", "bf16"]),
        (None, [], ["say which config"]),
        (
            None,
            ["--config", "small", "--precision", "fp16", "--device", "cpu"],
            ["fp16 needs a CUDA"],
        ),
        (None, ["--config", "small", "--device", "tpu"], ["unknown device"]),
        (
            None,
            [
                "--config",
                "small",
                "--set",
                "recurrent_dropout=0.2",
                "--set",
                "cell=lstm",
                "--set",
                "weight_drop=1.5",
                "--set",
                "tie_weights=yes please",
            ],
            [
                "3 problems",
                "'cell' is 'lstm'",
                "'weight_drop' is 1.5",
                "[0, 1)",
                "'tie_weights' must be true or false",
            ],
        ),
        (
            None,
            ["--config", "small", "--set", "recurrent_dropout=0.2"],
            ["'recurrent_dropout' needs cell: reference"],
        ),
        (
            None,
            ["--config", "small", "--seed", "3", "--set", "seed=4"],
            ["--seed and --set seed=... both set seed: give one of them."],
        ),
        (
            None,
            ["--config", "small", "--precision", "bf16", "--set", "precision=fp32"],
            ["--precision and --set precision=... both set precision"],
        ),
        (
            None,
            ["--config", "small", "--checkpoint-every", "5", "--set", "checkpoint_every=7"],
            ["--checkpoint-every and --set checkpoint_every=... both set checkpoint_every"],
        ),
        (
            None,
            ["--config", "small", "--corpus", "c", "--data-dir", "d"],
            ["--corpus and --data-dir both say where the text is", "Give one."],
        ),
    ],
    ids=[
        "unknown-name",
        "malformed",
        "duplicate-key",
        "unknown-key",
        "wrong-type",
        "out-of-range",
        "unknown-set",
        "bad-precision",
        "no-config",
        "fp16-on-cpu",
        "bad-device",
        "bad-variants",
        "recurrent-dropout-with-fused",
        "seed-twice",
        "precision-twice",
        "checkpoint-every-twice",
        "corpus-and-data-dir",
    ],
)
def test_bad_configs_are_refused_with_exit_2(tmp_path, yaml_text, args, fragments):
    if yaml_text is not None:
        path = tmp_path / "my.yaml"
        full = yaml.safe_dump(load_config("test").to_dict()) if yaml_text == "{}" else yaml_text
        path.write_text(full)
        args = ["--config", path, *args]
    result = ptblm("train", *args, "--runs-dir", tmp_path / "runs", cwd=tmp_path)
    assert_clean_failure(result, 2, *fragments)
    assert not (tmp_path / "runs").exists()  # nothing written for a refused config


@pytest.mark.parametrize("command", [["config", "show", "small"], ["runs", "--json"]])
def test_output_to_a_full_disk_is_one_line_and_exit_1(tmp_path, command):
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "ptblm", *command], stdout=full, stderr=subprocess.PIPE,
            text=True, cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == "error: cannot write the output (No space left on device).\n"


def test_an_error_that_cannot_be_printed_still_exits_with_its_code(tmp_path):
    """A terminal that hung up (SIGHUP) fails the last message: the exit code must still say
    what happened (it became 1, with a traceback nobody could read)."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "ptblm", "train", "--config", "no-such-config"],
            stderr=full, stdout=subprocess.PIPE, cwd=tmp_path, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    assert result.returncode == 2


def test_ctrl_c_while_the_command_starts_is_a_quiet_exit_130():
    """A Ctrl-C in the first tenth of a second (Python importing typer, before main's handling)
    printed a KeyboardInterrupt traceback. The interrupt is raised here by the import itself,
    where a real one lands at a moment the machine's speed decides."""
    interrupt_the_import = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'typer':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['ptblm', 'runs']\n"
        "from ptblm.__main__ import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", interrupt_the_import], capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 130
    assert result.stdout + result.stderr == ""


def test_download_from_a_mirror_then_nothing_more(tmp_path, ptb_dir, serve_dir):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (mirror / name).write_bytes((ptb_dir / name).read_bytes())
    url = serve_dir(mirror)
    env = {"PTBLM_DATA_URL": url}
    result = ptblm("download", "--data-dir", tmp_path / "data", env=env)
    assert result.returncode == 0, result.stderr
    # One line for the whole, on stdout: the folder and its three verified files.
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'data' / 'ptb'}: ptb.train.txt, ptb.valid.txt, ptb.test.txt present and verified."
    ]
    assert len(serve_dir.requests(url)) == 3
    # Off a terminal: one line per file on stderr, no progress bar stuck at 0%.
    assert [line.split(" (")[0] for line in result.stderr.splitlines()] == [
        f"downloaded {url}/{name}" for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
    ]
    assert "%" not in result.stderr
    result = ptblm("download", "--data-dir", tmp_path / "data", env=env)
    assert result.returncode == 0 and len(serve_dir.requests(url)) == 3


def test_download_from_a_dead_host_fails_cleanly(tmp_path):
    result = ptblm("download", "--data-dir", tmp_path / "data", env={"PTBLM_DATA_URL": dead_url()})
    assert_clean_failure(result, 1, "could not download", "by hand")
    assert not (tmp_path / "data").exists()  # no empty folders left behind either


def test_download_from_a_host_that_never_answers_times_out_on_each_try(tmp_path):
    """A host that takes the connection and then says nothing (a black hole, a hung server):
    each try gives up after DOWNLOAD_TIMEOUT, 3 tries, then the usual message. The timeouts are
    cut to 0.3 s here; with the shipped ones the worst case stays under the minute the docs
    promise (docs/faithful.md)."""
    from ptblm import download

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the connections; nobody ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code = (
            "import sys, ptblm.download as d\n"
            "d.DOWNLOAD_TIMEOUT, d.DOWNLOAD_BACKOFF = 0.3, 0.0\n"
            "from ptblm.cli import main\n"
            "sys.argv = ['ptblm', *sys.argv[1:]]\n"
            "main()\n"
        )
        command = [sys.executable, "-c", code, "download", "--data-dir", str(tmp_path / "data")]
        # Without a timeout on the read this would wait forever: the subprocess' own timeout
        # turns that into a failure.
        result = subprocess.run(
            command, env={**os.environ, **LOCAL_WITHOUT_PROXY, "PTBLM_DATA_URL": url},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        silent.setblocking(False)
        tries = 0
        while True:
            try:
                silent.accept()[0].close()
            except BlockingIOError:
                break
            tries += 1
    assert_clean_failure(result, 1, f"could not download {url}/ptb.train.txt: timed out", "by hand")
    assert tries == 3
    assert not (tmp_path / "data").exists()  # no empty folders left behind either
    worst = download.DOWNLOAD_TRIES * download.DOWNLOAD_TIMEOUT + sum(
        download.DOWNLOAD_BACKOFF * 2**attempt for attempt in range(download.DOWNLOAD_TRIES - 1)
    )
    assert worst < 60


def test_the_config_yaml_header_trains_the_same_run_again(tmp_path):
    """Its "Train again with" line holds what config.yaml does not (--max-steps, --corpus): run
    as written, it gives the same numbers, and the new run is listed under the first's config."""
    make_corpus(tmp_path / "corpus")
    first = ptblm(
        "train", "-c", "test", "--set", "vocab_size=40", "--max-steps", "3", "--corpus",
        "corpus", "--threads", "1", "--name", "first", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    header = (tmp_path / "runs/first/config.yaml").read_text().splitlines()[2]
    command = shlex.split(header.split("Train again with: ")[1])
    assert command == [
        "ptblm", "train", "--config", "runs/first/config.yaml", "--max-steps", "3", "--threads",
        "1", "--corpus", "corpus",
    ]  # fmt: skip
    again = ptblm(*command[1:], "--name", "again", "--quiet", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first, again = (
        json.loads((tmp_path / f"runs/{name}/metrics.json").read_text())
        for name in ("first", "again")
    )
    assert (again["test_ppl"], again["config_name"]) == (first["test_ppl"], "test")


def test_off_a_terminal_train_prints_plain_progress_lines(tmp_path):
    """Piped into a log, `ptblm train` writes a line like the tutorial's after the first window
    and at every tenth of an epoch, never a progress bar's carriage returns."""
    corpus = make_corpus(tmp_path / "corpus")
    result = ptblm(
        "train", "-c", "test", "--set", "vocab_size=40", "--set", "hidden_size=16",
        "--set", "max_epoch=1", "--set", "max_max_epoch=2", "--corpus", corpus,
        "--runs-dir", tmp_path / "runs", "--name", "logged",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr and "win/s" not in result.stdout
    pattern = re.compile(
        r"epoch (\d) (\d\.\d{3}) perplexity: \d+\.\d{3} speed: \d+ wps lr: ([\d.]+)"
    )
    lines = [pattern.fullmatch(line) for line in result.stdout.splitlines()]
    shown = [(int(m[1]), m[2], m[3]) for m in lines if m]
    history = json.loads((tmp_path / "runs/logged/metrics.json").read_text())["history"]
    windows = history[0]["windows"]
    tenth = windows // 10
    for epoch, lr in ((1, "1"), (2, "0.5")):
        fractions = [fraction for number, fraction, rate in shown if number == epoch]
        assert {rate for number, _, rate in shown if number == epoch} == {lr}
        due = {f"{window / windows:.3f}" for window in (1, *range(tenth, windows + 1, tenth))}
        due.add("1.000")
        if epoch == 2:
            due.discard(
                f"{1 / windows:.3f}"
            )  # the first-window line is the run's, not each epoch's
        assert due <= set(fractions), (due, fractions)
        assert fractions == sorted(fractions)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, ptb_dir):
    """`ptblm train --config test` as the newcomer flow, PTB fetched from a file:// mirror."""
    home = tmp_path_factory.mktemp("newcomer")
    result = ptblm(
        "train", "--config", "test", "--max-steps", "300", "--name", "smoke",
        cwd=home, env={"PTBLM_DATA_URL": ptb_dir.resolve().as_uri()},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return home, home / "runs" / "smoke", result


def test_eval_from_another_folder_reads_the_corpus_the_run_trained_with(trained_run):
    """A run trained with its data directory elsewhere (here: the newcomer's ./data, seen from
    another folder): eval tried to download PTB into ./data, and offline failed."""
    import torch

    home, run, _ = trained_run
    result = ptblm("eval", run, "--json", env={"PTBLM_DATA_URL": dead_url()})
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(result.stdout)["perplexity"] == metrics["best_test_ppl"]
    assert torch.load(run / "best.pt", weights_only=True)["data_dir"] == str(
        (home / "data").resolve()
    )


def test_a_run_is_named_as_ptblm_runs_lists_it(trained_run):
    """The name alone, looked up under --runs-dir (./runs by default), for eval, generate and
    --resume; a path is taken as it is."""
    home, run, _ = trained_run
    offline = {"PTBLM_DATA_URL": dead_url()}
    listed = json.loads(ptblm("runs", "--runs-dir", run.parent, "--json").stdout)["runs"]
    name = next(row["name"] for row in listed if row["path"] == str(run))
    by_path = ptblm("eval", run, "--json", env=offline)
    by_name = ptblm("eval", name, "--runs-dir", run.parent, "--json", env=offline)
    in_home = ptblm("eval", name, "--json", cwd=home, env=offline)  # ./runs
    assert by_path.returncode == by_name.returncode == in_home.returncode == 0, by_name.stderr
    scored = [json.loads(result.stdout) for result in (by_path, by_name, in_home)]
    # the same checkpoint (shown as found: relative to the folder eval ran in)
    assert {(s["perplexity"], (home / s["checkpoint"]).resolve()) for s in scored} == {
        (scored[0]["perplexity"], (run / "best.pt").resolve())
    }
    words = ptblm("generate", name, "--runs-dir", run.parent, "--words", "5", "--seed", "1")
    assert words.returncode == 0 and len(words.stdout.split()) >= 5, words.stderr
    resumed = ptblm("train", "--resume", name, "--runs-dir", run.parent, env=offline)
    assert resumed.returncode == 0 and "has finished already" in resumed.stdout, resumed.stderr
    assert_clean_failure(
        ptblm("eval", "no-such-run", "--runs-dir", run.parent), 1,
        "no-such-run: no such run directory or checkpoint file",
    )  # fmt: skip


def test_train_writes_the_run_directory(trained_run):
    home, run, result = trained_run
    assert (home / "data" / "ptb" / "ptb.train.txt").is_file()
    assert {"config.yaml", "best.pt", "last.pt", "metrics.json"} <= {p.name for p in run.iterdir()}
    assert [p for p in run.iterdir() if p.is_dir()] == []  # no stray sub-run
    assert load_config(str(run / "config.yaml")) == load_config("test")
    assert "ptblm train --config test" in (run / "config.yaml").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    for key in (
        "train_ppl",
        "valid_ppl",
        "test_ppl",
        "best_valid_ppl",
        "best_test_ppl",
        "train_wps",
        "wall_seconds",
        "device",
        "versions",
        "history",
    ):
        assert key in metrics
    assert metrics["global_step"] == 300
    assert f"{metrics['test_ppl']:.2f}" in result.stdout  # the summary shows the row
    # 300 of the test config's (929,589 // 20 - 1) // 2 = 23,239 windows an epoch: a cut-short
    # run says so, in fractions of an epoch.
    assert metrics["max_steps"] == 300 and metrics["cut_short"]
    assert metrics["epochs_trained"] == pytest.approx(300 / 23_239)
    assert "Cut short by --max-steps 300 after 0.0129 epochs" in result.stdout
    assert "published" not in result.stdout


def test_tensorboard_reads_the_scalars_and_hparams(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = trained_run
    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()
    for tag in TAGS:
        assert tag in tags["scalars"], tags
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")  # in the run itself, not a sub-run
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert {m.name.tag for m in experiment.experiment.metric_infos} == {
        "train/ppl",
        "valid/ppl",
        "test/ppl",
    }
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["hidden_size"].number_value == 2
    assert session.session_start_info.hparams["config_name"].string_value == "test"
    assert session.session_start_info.hparams["max_steps"].number_value == 300
    assert session.session_start_info.hparams["eval_tokens"].number_value == 0  # tested whole
    # Booleans as booleans (torch's hparams() writes 0.0), and what tells runs apart first.
    assert session.session_start_info.hparams["tie_weights"].WhichOneof("kind") == "bool_value"
    columns = [info.name for info in experiment.experiment.hparam_infos]
    assert columns[:4] == ["seed", "config_name", "max_steps", "eval_tokens"]
    assert "tie_weights" in columns
    metric_order = [m.name.tag for m in experiment.experiment.metric_infos]
    assert metric_order[0] == "test/ppl"
    # A point every 1/20 of a short run (300 windows: every 15), every 50 in a long one.
    assert [event.step for event in events.Scalars("train/loss")] == list(range(15, 301, 15))
    metrics = json.loads((run / "metrics.json").read_text())
    assert events.Scalars("test/ppl")[-1].value == pytest.approx(metrics["test_ppl"], rel=1e-6)


def test_eval_reproduces_the_run_metrics_exactly(trained_run):
    home, run, _ = trained_run
    metrics = json.loads((run / "metrics.json").read_text())
    result = ptblm("eval", "--json", cwd=home)  # default: the newest run's best.pt, test split
    assert result.returncode == 0, result.stderr
    best = json.loads(result.stdout)  # stdout is exactly one JSON object
    assert best["perplexity"] == metrics["best_test_ppl"]
    assert best["tokens"] == 82_429 and best["split"] == "test"
    assert best["checkpoint"].endswith("best.pt")
    result = ptblm("eval", run / "last.pt", "--json", cwd=home)
    assert json.loads(result.stdout)["perplexity"] == metrics["test_ppl"]
    result = ptblm(
        "eval", run, "--split", "valid", "--batch-size", "20", "--num-steps", "2", cwd=home
    )
    assert result.returncode == 0
    assert f"{metrics['best_valid_ppl']:.3f}" in result.stdout


def test_text_of_the_ptb_test_file_is_the_test_split(trained_run, ptb_dir):
    """--text reads any file the PTB way; on ptb.test.txt it is `ptblm eval`'s test number, and
    its lines' log-probabilities add up to the file's."""
    home, run, _ = trained_run
    split = json.loads(ptblm("eval", run, "--json", cwd=home).stdout)
    result = ptblm(
        "eval", run, "--text", ptb_dir / "ptb.test.txt", "--per-line", "--json", cwd=home
    )
    assert result.returncode == 0, result.stderr
    *lines, total = [json.loads(line) for line in result.stdout.splitlines()]
    total = total["total"]
    assert total["perplexity"] == pytest.approx(split["perplexity"], rel=1e-6)
    assert total["tokens"] == split["tokens"] == 82_429
    assert total["unknown_words"] == 0  # PTB's rare words are <unk> in the file already
    assert len(lines) == (ptb_dir / "ptb.test.txt").read_text().count("\n")
    assert sum(line["logprob"] for line in lines) == pytest.approx(total["logprob"], rel=1e-9)


def test_eval_without_runs_fails_cleanly(tmp_path):
    assert_clean_failure(ptblm("eval", cwd=tmp_path), 1, "no run with a checkpoint", "ptblm train")


def test_an_unwritable_runs_dir_fails_cleanly(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = ptblm(
        "train", "-c", "test", "--set", "vocab_size=40", "--corpus", corpus, "--runs-dir", blocker
    )
    assert_clean_failure(result, 1, "cannot create the run directory", "--runs-dir")


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    assert_clean_failure(ptblm("train", "--resume", tmp_path), 1, "not a ptblm run directory")


def test_an_unwritable_data_dir_fails_cleanly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = ptblm("download", "--data-dir", blocker)
    assert_clean_failure(result, 1, "cannot create the data directory", "--data-dir")


def test_max_steps_must_be_positive(tmp_path):
    result = ptblm("train", "-c", "test", "--max-steps", "0", "--runs-dir", tmp_path / "runs")
    assert result.returncode == 2 and not (tmp_path / "runs").exists()


def test_bf16_on_this_cpu_trains_or_is_refused_before_anything_is_written(tmp_path):
    """Where the CPU has native bf16 it trains; where not, exit 2 and one line, no run
    directory. On every machine one of the two runs for real."""
    corpus = make_corpus(tmp_path / "corpus")
    # The shapes test_train's bf16 test trains (oneDNN's bf16 LSTM on the smallest sizes is
    # not what this checks).
    sizes = ["vocab_size=40", "hidden_size=8", "num_steps=5", "batch_size=4"]
    args = ["train", "-c", "small", *(f"--set={size}" for size in sizes), "--corpus", corpus]
    args += ["--precision", "bf16", "--max-steps", "5", "--runs-dir", tmp_path / "runs"]
    result = ptblm(*args)
    if cpu_has_native_bf16_by_its_flags():
        assert result.returncode == 0, result.stderr
        metrics = json.loads(next((tmp_path / "runs").glob("*/metrics.json")).read_text())
        assert metrics["precision"] == "bf16"
    else:
        assert_clean_failure(result, 2, "no native bf16", "--precision fp32")
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "runs").exists()


def test_info_shows_what_a_bug_report_needs(tmp_path, ptb_dir):
    import torch

    data = tmp_path / "data"
    (data / "ptb").mkdir(parents=True)
    for name in ("ptb.train.txt", "ptb.valid.txt"):
        (data / "ptb" / name).write_bytes((ptb_dir / name).read_bytes())
    (data / "ptb" / "ptb.valid.txt").write_bytes(b"edited")
    result = ptblm("info", "--data-dir", data)
    assert result.returncode == 0, result.stderr
    assert f"torch {torch.__version__}" in result.stdout
    assert (
        "native bf16: " + ("yes" if cpu_has_native_bf16_by_its_flags() else "no") in result.stdout
    )
    assert (
        "ptb.train.txt verified, ptb.valid.txt wrong sha256, ptb.test.txt missing (remove "
        "ptb.valid.txt, then ptblm download fetches them)" in result.stdout
    )
    details = json.loads(ptblm("info", "--json", "--data-dir", data).stdout)
    assert details["versions"]["torch"] == torch.__version__
    assert set(details["versions"]) >= {"ptblm", "python", "numpy", "typer", "tensorboard"}
    assert details["cpu"]["native_bf16"] == cpu_has_native_bf16_by_its_flags()
    assert details["cpu"]["precisions"][0] == "fp32"
    assert details["cuda"]["available"] == torch.cuda.is_available()
    assert details["data"]["files"] == {
        "ptb.train.txt": "verified",
        "ptb.valid.txt": "wrong sha256",
        "ptb.test.txt": "missing",
    }
    assert details["data"]["verified"] is False


def test_config_list_shows_size_epochs_parameters_and_time():
    result = ptblm("config", "list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:9]}
    assert set(rows) >= {"small", "medium", "large", "test", "large-variational-tied"}
    # Zaremba et al.: small 2x200, medium 2x650 (~20M parameters), large 2x1500 (~66M).
    assert rows["small"].split()[1:3] == ["2x200", "13"]
    assert rows["medium"].split()[1:4] == ["2x650", "39", "19.8M"]
    assert rows["large"].split()[1:4] == ["2x1500", "55", "66.0M"]
    assert "115.91" in rows["small"] and "wants a GPU" in rows["large"]
    assert rows["medium-tied"].split()[1:4] == ["2x650", "39", "13.3M"]  # one matrix fewer
    assert "69.0" in rows["large-variational-tied"]  # Inan et al.'s number to beat
    assert "wants a GPU" not in rows["small"]


def test_an_unknown_config_is_reported_before_torch_is_imported(tmp_path):
    """The check runs before `import torch` (seconds): with torch made unimportable, the
    message is still the config's."""
    (tmp_path / "torch.py").write_text("raise ImportError('torch was imported')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    result = ptblm("train", "--config", "smal", env=env)
    assert_clean_failure(result, 2, "unknown config 'smal'")


def test_usage_errors_are_one_line_in_ptblms_voice_and_h_is_help():
    for args, fragment in (
        (["eval", "--batch-size", "0"], "'--batch-size'"),
        (["train", "--no-such-option"], "--no-such-option"),
        (["bogus"], "bogus"),
    ):
        result = ptblm(*args)
        assert_clean_failure(result, 2, "error: ", fragment, "--help)")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = ptblm("train", "-h")
    assert result.returncode == 0 and "--max-steps" in result.stdout


def test_every_shipped_config_is_named_where_a_config_is_asked_for():
    shipped = [path.stem for path in (REPO / "configs").glob("*.yaml")]
    result = ptblm("train")
    assert_clean_failure(result, 2, *shipped)
    help_text = "".join(ptblm("train", "--help").stdout.split())  # wrapped at any hyphen
    assert all(name in help_text for name in shipped)


def test_the_messages_name_what_the_user_typed(tmp_path):
    result = ptblm("train", "-c", "test", "--precision", "fp8")
    assert_clean_failure(result, 2, "--precision fp8: use fp32, bf16, fp16")
    assert "--set" not in result.stderr
    shown = ptblm("config", "show", "small", "--set", "learning_rate=0.5")
    assert "# ptblm config show small --set learning_rate=0.5" in shown.stdout


def test_a_path_of_bytes_that_are_not_utf8_is_shown_escaped_or_refused(tmp_path):
    """`--name $'a\\xffb'` was a UnicodeEncodeError traceback, after the run directory was made."""
    corpus = make_corpus(tmp_path / "corpus")
    name = os.fsdecode(b"a\xffb")
    result = ptblm("train", "-c", "test", "--corpus", corpus, "--name", name, cwd=tmp_path)
    assert_clean_failure(result, 2, "--name a\\udcffb: a run's path must be UTF-8 text")
    assert not (tmp_path / "runs").exists()
    (tmp_path / os.fsdecode(b"t\xff.yaml")).write_bytes((REPO / "configs/test.yaml").read_bytes())
    shown = ptblm("config", "show", os.fsdecode(b"t\xff.yaml"), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("# ptblm config show 't\\udcff.yaml'\n")
    # A run named after that file, without --name.
    result = ptblm("train", "-c", os.fsdecode(b"t\xff.yaml"), "--corpus", corpus, cwd=tmp_path)
    assert_clean_failure(
        result, 2, "--config t\\udcff: a run's path must be UTF-8 text; the run is named after "
        "it: give it a --name."
    )  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_a_directory_the_user_may_not_read_is_one_line_not_a_traceback(tmp_path):
    """`ptblm eval` of another user's run (mode 0700), simulated: root reads everything."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    code = (
        "import sys, pathlib\n"
        "is_file = pathlib.Path.is_file\n"
        "def denied(path):\n"
        "    if path.parent.name == 'theirs':\n"
        "        raise PermissionError(13, 'Permission denied', str(path))\n"
        "    return is_file(path)\n"
        "pathlib.Path.is_file = denied\n"
        "from ptblm.cli import main\n"
        "sys.argv = ['ptblm', *sys.argv[1:]]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "eval", str(theirs)], capture_output=True, text=True,
        timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert_clean_failure(
        result, 1, f"error: {theirs / 'best.pt'}: Permission denied. Check its permissions"
    )
