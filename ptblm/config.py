"""The run configuration: one frozen dataclass, loaded from a flat YAML mapping.

The first twelve fields are the TensorFlow PTB tutorial's, with its names, so a user can compare
`configs/small.yaml` with `SmallConfig` line by line. The fields after them are ptblm's own
additions; their defaults keep a run exactly as the tutorial's.

Shipped configs are addressed by name (`--config small`), any other YAML file by path
(`--config my.yaml`). `--set key=value` overrides a field; the value is parsed as YAML, then
type- and range-checked like the file. Every problem is collected and raised at once as one
ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ptblm import safe_yaml
from ptblm.errors import ConfigError, cut, quote

PRECISIONS = ("fp32", "bf16", "fp16")
SEED_LIMIT = 2**32  # numpy's np.random.seed takes 0 <= seed < 2**32; torch takes more
CELLS = ("fused", "reference")
DROPOUT_MODES = ("standard", "variational")


@dataclass(frozen=True)
class Config:
    # --- the tutorial's fields (docs/reference.md, "The configurations") ---
    init_scale: float  # parameters start uniform(-init_scale, +init_scale)
    learning_rate: float  # SGD learning rate of the first max_epoch epochs
    max_grad_norm: float  # clip all gradients together to this global norm
    num_layers: int
    num_steps: int  # truncated-BPTT window length
    hidden_size: int  # LSTM units per layer, also the embedding size
    max_epoch: int  # epochs at the initial learning rate
    max_max_epoch: int  # total epochs
    keep_prob: float  # 1 - dropout probability on non-recurrent connections
    lr_decay: float  # learning rate multiplier per epoch after max_epoch
    batch_size: int
    vocab_size: int
    # --- ptblm's additions; the defaults are the faithful setting ---
    seed: int = 0  # seeds torch, numpy and python's random
    precision: str = "fp32"  # fp32 (faithful), bf16 or fp16 autocast
    checkpoint_every: int = 0  # write last.pt every N training windows (0: end of epoch only)
    allow_tf32: bool = False  # let CUDA use TF32 matrix products (faster, not bit-faithful)
    cuda_graph: bool = True  # on CUDA (fp32, one process) replay the training step as a CUDA graph
    # --- the model family (model.py); the defaults are Zaremba et al.'s model ---
    cell: str = "fused"  # fused (nn.LSTM: cuDNN / oneDNN) or reference (the gate equations)
    forget_bias: float = 0.0  # a constant added to the forget gate (TensorFlow's forget_bias)
    tie_weights: bool = False  # the decoder's weight is the embedding matrix
    dropout_mode: str = "standard"  # standard (a new mask per element) or variational
    embedding_dropout: float = 0.0  # drop whole word types from the embedding, per window
    weight_drop: float = 0.0  # DropConnect on the LSTM's hidden-to-hidden weights, per window
    recurrent_dropout: float = 0.0  # Gal's mask on h between time steps (cell: reference only)
    weight_decay: float = 0.0  # L2 penalty in the SGD update

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
REQUIRED = [name for name, f in FIELDS.items() if f.default is dataclasses.MISSING]
TUTORIAL_FIELDS = tuple(REQUIRED)  # the twelve fields of the tutorial's configs
MODEL_FAMILY_FIELDS = (
    "cell", "forget_bias", "tie_weights", "dropout_mode",
    "embedding_dropout", "weight_drop", "recurrent_dropout", "weight_decay",
)  # fmt: skip


def model_variant(config: Config) -> dict[str, Any]:
    """The model-family options that differ from Zaremba et al.'s model ({} for the faithful)."""
    return {
        name: getattr(config, name)
        for name in MODEL_FAMILY_FIELDS
        if getattr(config, name) != FIELDS[name].default
    }


def learning_rate_at(config: Config, epoch: int) -> float:
    """The learning rate of 0-based `epoch`: learning_rate for max_epoch epochs, then multiplied
    by lr_decay every epoch (docs/reference.md, "Training")."""
    return config.learning_rate * config.lr_decay ** max(epoch + 1 - config.max_epoch, 0)


def _field_type(name: str) -> type:
    # `from __future__ import annotations` turns annotations into strings.
    return {"float": float, "int": int, "str": str, "bool": bool}[FIELDS[name].type]


def shipped_configs() -> dict[str, Path]:
    """Names of the YAML files in configs/, to paths.

    The top-level configs/ folder is installed as the data package ptblm.configs; when the
    package is imported from a checkout that was not installed, the folder is read directly.
    That package has no __init__.py (configs/ is for users), so from a wheel it is a namespace
    package, whose `files()` is no path of its own: its entries are.
    """
    try:
        entries = list(resources.files("ptblm.configs").iterdir())
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parent.parent / "configs"
        entries = list(folder.iterdir()) if folder.is_dir() else []
    paths = sorted(Path(str(entry)) for entry in entries if entry.name.endswith(".yaml"))
    return {path.stem: path for path in paths if path.is_file()}  # none from inside a zip


def resolve_config_path(name_or_path: str) -> Path:
    """`small` -> the shipped small.yaml; anything else must be an existing YAML file."""
    shipped = shipped_configs()
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if name_or_path:  # Path("") is the working directory
        if path.is_file():
            return path
        if path.is_dir():
            # no option named: `config show` takes it as an argument, `train` as --config
            raise ConfigError(f"config {name_or_path} is a directory: give a config's YAML file.")
        if path.exists():  # a FIFO, a device
            raise ConfigError(
                f"config {name_or_path} is not a regular file: give a config's YAML file."
            )
    raise ConfigError(
        f"unknown config '{name_or_path}': not a shipped config and no such file. "
        f"Shipped configs: {', '.join(sorted(shipped))}; or give the path of a YAML file."
    )


def _check_value(name: str, value: Any, where: str) -> tuple[Any, str | None]:
    """Type-check one value; returns (converted value, problem or None)."""
    kind = _field_type(name)
    # bool is a subclass of int in Python; `hidden_size: true` is a mistake, not 1.
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), None
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value, None
    if kind in (str, bool) and isinstance(value, kind):
        return value, None
    expected = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    return (
        value,
        f"{where}: '{name}' must be {expected[kind]}, got {quote(value)} ({type(value).__name__})",
    )


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max (no torch import here)


def _range_problems(values: dict[str, Any], sources: dict[str, str]) -> list[str]:
    """Range checks on values that passed the type check (those absent from `values` are skipped)."""
    problems = []

    def need(name: str, ok, allowed: str) -> None:
        if name in values and not ok(values[name]):
            problems.append(
                f"{sources[name]}: '{name}' is {quote(values[name])}; allowed: {allowed}"
            )

    # The weights and the learning rate are float32: a larger number overflowed deep in torch.
    need("init_scale", lambda v: 0 < v <= FLOAT32_MAX / 2, "a number > 0 and <= 1.7e+38")
    for name in ("learning_rate", "max_grad_norm"):
        need(name, lambda v: 0 < v <= FLOAT32_MAX, "a number > 0 and <= 3.4e+38 (float32)")
    for name in ("num_layers", "num_steps", "hidden_size", "max_max_epoch", "batch_size"):
        need(name, lambda v: v >= 1, "an integer >= 1")
    need("vocab_size", lambda v: v >= 2, "an integer >= 2")
    need("keep_prob", lambda v: 0 < v <= 1, "a number in (0, 1]")
    need("lr_decay", lambda v: 0 < v <= 1, "a number in (0, 1]")
    total = values.get("max_max_epoch", math.inf)
    need("max_epoch", lambda v: 0 <= v <= total, f"an integer from 0 to max_max_epoch ({total})")
    need("seed", lambda v: 0 <= v < SEED_LIMIT, f"an integer from 0 to {SEED_LIMIT - 1}")
    need("precision", lambda v: v in PRECISIONS, " | ".join(PRECISIONS))
    need("checkpoint_every", lambda v: v >= 0, "an integer >= 0 (0: end of epoch only)")
    need("cell", lambda v: v in CELLS, " | ".join(CELLS))
    need("forget_bias", lambda v: abs(v) <= FLOAT32_MAX, "a number from -3.4e+38 to 3.4e+38")
    need("dropout_mode", lambda v: v in DROPOUT_MODES, " | ".join(DROPOUT_MODES))
    for name in ("embedding_dropout", "weight_drop", "recurrent_dropout"):
        need(name, lambda v: 0 <= v < 1, "a probability in [0, 1)")
    need("weight_decay", lambda v: 0 <= v <= FLOAT32_MAX, "a number >= 0 and <= 3.4e+38")
    if values.get("recurrent_dropout") and values.get("cell") == "fused":
        problems.append(
            f"{sources['recurrent_dropout']}: 'recurrent_dropout' needs cell: reference (the fused "
            f"LSTM cannot drop h between time steps); set cell: reference, or use weight_drop"
        )
    return problems


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value parsed as YAML). Raises ConfigError if malformed."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set '{cut(text)}': expected KEY=VALUE, e.g. --set learning_rate=0.5")
    try:
        value = safe_yaml.load(raw) if raw.strip() else None
    except safe_yaml.REFUSED as error:
        raise ConfigError(f"--set {cut(text)}: {error.problem}") from None
    except yaml.YAMLError:
        value = raw  # not YAML: leave it to the type check to say what it should be
    return key, value


def build_config(
    values: dict[str, Any], overrides: list[str] = (), where: str = "config"
) -> Config:
    """Validate a mapping plus `key=value` overrides into a Config, reporting every problem."""
    problems = []
    merged = {}
    sources = {}
    for key, value in values.items():
        if key not in FIELDS:
            problems.append(f"{where}: unknown key {quote(key)}; known keys: {', '.join(FIELDS)}")
            continue
        merged[key], sources[key] = value, where
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as error:
            problems.extend(error.problems)
            continue
        if key not in FIELDS:
            problems.append(
                f"--set {cut(text)}: unknown key {quote(key)}; known keys: {', '.join(FIELDS)}"
            )
            continue
        merged[key], sources[key] = value, f"--set {cut(text)}"

    for name in REQUIRED:
        if name not in merged:
            problems.append(f"{where}: missing key '{name}'")
    checked = {}
    for name, field in FIELDS.items():
        if name not in merged:
            if field.default is not dataclasses.MISSING:  # a missing required key is reported above
                checked[name], sources[name] = field.default, "default"
            continue
        value, problem = _check_value(name, merged[name], sources[name])
        if problem:
            problems.append(problem)
        else:
            checked[name] = value
    problems += _range_problems(checked, sources)
    if problems:
        raise ConfigError(problems)
    return Config(**checked)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold one flat mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot be read ({error})") from None
    try:
        values = safe_yaml.load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: malformed YAML{at}: {reason}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path}: expected a mapping of 'key: value' lines, got {type(values).__name__}"
        )
    return values


def load_config(name_or_path: str, overrides: list[str] = ()) -> Config:
    """Load a shipped config by name or a YAML file by path, then apply `key=value` overrides."""
    path = resolve_config_path(name_or_path)
    return build_config(read_yaml_mapping(path), overrides, where=str(path))


def config_to_yaml(config: Config, header: str = "") -> str:
    """The config as a flat YAML mapping in field order, loadable again with load_config."""
    body = yaml.safe_dump(config.to_dict(), sort_keys=False)
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + body
