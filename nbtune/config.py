"""One settings dataclass per pipeline stage.

Each field carries `metadata={"help": ...}` (and, where it helps, `choices`,
`min`, `max`). The Python API takes these objects (or their fields as keyword
arguments) and the widget forms are generated from the very same fields, so the
help text in a tooltip is the help text in `help(CleanConfig)` and the two can
never drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import regex

from nbtune.errors import ConfigError

T = TypeVar("T")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with help text (and optional choices / bounds)."""
    return field(default=default, metadata={"help": help, **extra})


class _Config:
    """Shared behaviour: validation, dict round-trip, keyword overrides.

    A config validates itself when it is constructed (`__post_init__`), so a
    bad value fails where it is typed, not stages later; `replace`, `from_dict`
    and the widget forms all construct, so none of them can skip the checks.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            _check_type(f.name, value, hints.get(f.name))
            _check_bounds(f.name, value, f.metadata)
        self._check()

    def _check(self) -> None:
        """Cross-field checks; subclasses override."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any], *, path: str | os.PathLike | None = None) -> T:
        """The config stored as a dict (session.json, run.json, recipe.json); `path` names that file in errors.

        An unknown key is an error, not silently dropped: a typo such as
        ``"min_char"`` would otherwise leave the setting at its default.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} settings must be an object of name: value pairs, not "
                              f"{type(data).__name__}", path=path, fix="check the file's structure")
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = [k for k in data if k not in known]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown setting {key!r} for {cls.__name__}", path=path, column=str(key),
                              fix=f"{hint}fix or remove it; valid settings are: {', '.join(known)}")
        return cls(**data)

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed; unknown names raise a ConfigError."""
        known = {f.name for f in fields(self)}  # type: ignore[arg-type]
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(unknown)} for {type(self).__name__}",
                fix=f"valid settings are: {', '.join(sorted(known))}",
            )
        new = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        new.validate()  # type: ignore[attr-defined]
        return new


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations of a config class (cached: resolving costs ~50 µs)."""
    return typing.get_type_hints(cls)


def _kinds(annotation: Any) -> set[type]:
    """The plain types an annotation such as ``int | None`` allows."""
    args = typing.get_args(annotation) or (annotation,)
    return {typing.get_origin(a) or a for a in args if a is not type(None)}


def _check_type(name: str, value: Any, annotation: Any) -> None:
    """Numbers must be finite numbers and switches must be booleans (a JSON "5" or NaN is not a setting)."""
    kinds = _kinds(annotation)
    if bool in kinds and not isinstance(value, bool):
        raise ConfigError(f"{value!r} is not true or false", column=name, fix=f"set {name} to True or False")
    if kinds & {int, float} and not kinds & {str, bool}:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{value!r} is not a number", column=name, fix=f"set {name} to a number")
        if not math.isfinite(value):
            raise ConfigError(f"{value!r} is not a finite number", column=name,
                              fix=f"set {name} to an ordinary number (NaN and infinity are not allowed)")
        if float not in kinds and not isinstance(value, numbers.Integral) and not float(value).is_integer():
            raise ConfigError(f"{value!r} is not a whole number", column=name, fix=f"set {name} to a whole number")
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{list(value)!r} holds {item!r}, not a finite number", column=name,
                                  fix=f"use ordinary numbers in {name}")


def _check_bounds(name: str, value: Any, meta: Any) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{value!r} is not a valid choice",
            column=name,
            fix=f"use one of {', '.join(map(repr, meta['choices']))}",
        )
    if "min" in meta and isinstance(value, (int, float)) and value < meta["min"]:
        raise ConfigError(f"{value!r} is below the minimum {meta['min']}", column=name,
                          fix=f"set {name} to at least {meta['min']}")
    if "max" in meta and isinstance(value, (int, float)) and value > meta["max"]:
        raise ConfigError(f"{value!r} is above the maximum {meta['max']}", column=name,
                          fix=f"set {name} to at most {meta['max']}")


@dataclass
class SplitConfig(_Config):
    """How the loaded rows are split into training and validation sets."""

    validation_fraction: float = _opt(0.1, "Share of rows held out for validation (0 disables the split).",
                                      min=0.0, max=0.5)
    seed: int = _opt(0, "Random seed of the split; the same seed always gives the same split.")


@dataclass
class CleanConfig(_Config):
    """The cleaning recipe: which steps run, in this order, and their settings.

    Transform steps change text; filter steps drop whole rows and record why.
    For chat and instruction data the transforms apply to every message and the
    filters look at all the messages of a row together.
    """

    max_row_chars: int | None = _opt(None, "Drop rows longer than this many characters before any other step runs "
                                     "(None: no cap). Every step takes time linear in the row, so this is for "
                                     "keeping pasted logs or dumps of many megabytes out, not for speed.", min=1)
    unicode_form: str | None = _opt("NFC", "Unicode normalisation form (None to skip). NFKC also folds look-alike "
                                    "characters such as full-width letters.", choices=["NFC", "NFKC", "NFD", "NFKD"])
    strip_html: bool = _opt(True, "Remove HTML tags and decode entities such as &amp;amp;.")
    collapse_whitespace: bool = _opt(True, "Collapse runs of spaces and tabs, trim lines and drop repeated blank lines.")
    mask_pii: bool = _opt(False, "Replace e-mail addresses, phone numbers and IP addresses with <EMAIL>, <PHONE>, <IP>.")
    min_chars: int | None = _opt(1, "Drop rows shorter than this many characters (None: no lower bound).", min=0)
    max_chars: int | None = _opt(None, "Drop rows longer than this many characters (None: no upper bound).", min=1)
    min_words: int | None = _opt(None, "Drop rows with fewer words than this (None: no lower bound).", min=0)
    max_words: int | None = _opt(None, "Drop rows with more words than this (None: no upper bound).", min=1)
    keep_regex: str | None = _opt(None, "Keep only rows that match this regular expression.")
    drop_regex: str | None = _opt(None, "Drop rows that match this regular expression.")
    regex_timeout: float = _opt(1.0, "Seconds keep_regex or drop_regex may take on one row; a pattern that takes "
                                "longer (e.g. nested quantifiers such as (a+)+) stops cleaning with an error that "
                                "names the pattern and the row.", min=0.001, max=3600.0)
    repetition_filter: bool = _opt(True, "Drop repetitive rows (Gopher-style: too many duplicated lines or "
                                   "duplicated word n-grams). Only rows with at least `repetition_min_words` words "
                                   "are judged.")
    max_duplicate_line_fraction: float = _opt(0.3, "Repetition filter: highest allowed share of duplicated lines.",
                                              min=0.0, max=1.0)
    max_duplicate_ngram_fraction: float = _opt(0.15, "Repetition filter: highest allowed share of characters inside "
                                               "duplicated word 5-grams.", min=0.0, max=1.0)
    repetition_min_words: int = _opt(50, "Repetition filter: rows with fewer words are never judged repetitive.",
                                     min=0)
    exact_dedup: bool = _opt(True, "Drop rows whose normalised text (case-folded, whitespace-collapsed) was seen "
                             "before; the first occurrence is kept.")
    near_dedup: bool = _opt(False, "Drop near-duplicates (MinHash + LSH over word 5-grams); slower than exact dedup.")
    near_dedup_threshold: float = _opt(0.8, "Near-dedup: estimated Jaccard similarity at or above which two rows "
                                       "count as duplicates.", min=0.1, max=1.0)

    def _check(self) -> None:
        for low, high in (("min_chars", "max_chars"), ("min_words", "max_words")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"{low}={lo} is larger than {high}={hi}", column=low,
                                  fix=f"lower {low} or raise {high}")
        for name in ("keep_regex", "drop_regex"):
            pattern = getattr(self, name)
            if pattern is None:
                continue
            try:
                regex.compile(pattern)  # the `regex` module runs the filters: it has a time limit
            except regex.error as exc:
                raise ConfigError(f"invalid regular expression {pattern!r}: {exc.msg}", column=name,
                                  fix=f"fix the pattern near position {exc.pos}") from None


@dataclass
class TokenizerConfig(_Config):
    """Which tokenizer turns text into tokens, and how rows become training sequences."""

    tokenizer: str = _opt("bpe", "'bpe' trains a new byte-level BPE tokenizer on the session's training split; "
                          "anything else is a local folder or a hub id of a pretrained tokenizer.")
    vocab_size: int = _opt(4096, "Vocabulary size of a newly trained BPE tokenizer.", min=260, max=262144)
    context_length: int = _opt(512, "Longest training sequence in tokens; longer rows are truncated or split.",
                               min=8, max=131072)
    pack: bool = _opt(True, "Pack several rows into each sequence (no padding waste); document boundaries are kept.")
    response_only_loss: bool = _opt(True, "For instruction and chat data, learn only from the assistant's tokens "
                                    "(prompt tokens are masked).")
    trust_remote_code: bool = _opt(False, "Allow a hub tokenizer to run its own Python code. Only for sources you trust.")


@dataclass
class ScratchModelConfig(_Config):
    """A new Llama-style decoder, initialised at random (the from-scratch path).

    `preset` fills the sizes; any field set explicitly wins over the preset.
    The vocabulary always comes from the session's tokenizer.
    """

    preset: str = _opt("tiny", "Starting sizes: 'tiny' (~1M parameters, seconds per step on a CPU), 'small' "
                       "(~10M), 'medium' (~40M), 'large' (~360M, for a GPU).",
                       choices=["tiny", "small", "medium", "large"])
    layers: int | None = _opt(None, "Number of transformer blocks.", min=1, max=128)
    hidden_size: int | None = _opt(None, "Width of the residual stream; must be divisible by heads.", min=16)
    heads: int | None = _opt(None, "Attention heads.", min=1)
    kv_heads: int | None = _opt(None, "Key/value heads (grouped-query attention); must divide heads.", min=1)
    intermediate_size: int | None = _opt(None, "Width of the MLP (default: about 8/3 of hidden_size, rounded).",
                                         min=16)
    context_length: int | None = _opt(None, "Longest sequence the model sees (default: the tokenizer "
                                      "settings' context_length).", min=8)
    tie_embeddings: bool = _opt(True, "Share the input embedding and output projection (fewer parameters).")
    seed: int = _opt(0, "Seed of the random initialisation.")
    device: str | None = _opt(None, "Override the device ('cuda', 'mps', 'cpu'); default: the best one attached.",
                              choices=["cuda", "mps", "cpu"])
    precision: str | None = _opt(None, "Override the precision; default: bf16 on GPUs that support it, else fp16 "
                                 "with loss scaling; fp32 on CPU.", choices=["bf16", "fp16", "fp32"])

    def _check(self) -> None:
        if self.hidden_size and self.heads and self.hidden_size % self.heads:
            raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by heads={self.heads}",
                              column="hidden_size", fix="pick a hidden size that is a multiple of heads")
        if self.heads and self.kv_heads and self.heads % self.kv_heads:
            raise ConfigError(f"kv_heads={self.kv_heads} does not divide heads={self.heads}", column="kv_heads",
                              fix="use a divisor of heads (e.g. heads, heads/2, 1)")


@dataclass
class PretrainedModelConfig(_Config):
    """A pretrained causal LM to fine-tune, and how (the fine-tune path)."""

    model: str = _opt("default", "A local folder or hub id; 'default' is the embedded SmolLM2-135M-Instruct "
                      "(works offline).")
    method: str = _opt("lora", "full: train every weight; lora: small adapters on a frozen model; qlora: LoRA on a "
                       "4-bit NF4 model (least memory); lora-8bit: LoRA on an 8-bit model.",
                       choices=["full", "lora", "qlora", "lora-8bit"])
    lora_rank: int = _opt(16, "LoRA rank r: adapter size (higher = more capacity and memory).", min=1, max=1024)
    lora_alpha: int = _opt(32, "LoRA alpha: scale of the adapter update (often 2 x rank).", min=1)
    lora_dropout: float = _opt(0.05, "Dropout on the adapter input.", min=0.0, max=0.9)
    target_modules: str = _opt("all-linear", "Which layers get adapters: 'all-linear' or comma-separated module "
                               "names such as 'q_proj,v_proj'.")
    trust_remote_code: bool = _opt(False, "Allow the model repository to run its own Python code. Only for sources "
                                   "you trust.")
    allow_pickle: bool = _opt(False, "Allow loading weights from pickle files (.bin/.pt), which can run code. "
                              "safetensors are used whenever present.")
    device: str | None = _opt(None, "Override the device ('cuda', 'mps', 'cpu'); default: the best one attached.",
                              choices=["cuda", "mps", "cpu"])
    precision: str | None = _opt(None, "Override the precision; default: bf16 on GPUs that support it, else fp16 "
                                 "with loss scaling; fp32 on CPU.", choices=["bf16", "fp16", "fp32"])


@dataclass
class TrainConfig(_Config):
    """How long and how to train. Set one of steps, epochs or token_budget."""

    steps: int | None = _opt(None, "Optimizer steps to run (wins over epochs and token_budget).", min=1)
    epochs: float | None = _opt(None, "Passes over the training tokens (used when steps is not set).", min=0.01)
    token_budget: int | None = _opt(None, "Train on about this many tokens (used when steps and epochs are not set).",
                                    min=1)
    learning_rate: float | None = _opt(None, "Peak learning rate. None: the model's method's default (scratch 1e-3, "
                                       "full 2e-5, lora / qlora / lora-8bit 2e-4), recorded in run.json.",
                                       min=0.0, max=1.0)
    schedule: str = _opt("cosine", "Learning-rate schedule after warmup.", choices=["cosine", "linear", "constant"])
    warmup_steps: int | None = _opt(None, "Linear warmup steps (default: 5% of the steps).", min=0)
    min_lr_ratio: float = _opt(0.1, "Cosine/linear schedules end at this fraction of the peak rate.", min=0.0, max=1.0)
    weight_decay: float = _opt(0.1, "AdamW weight decay (not applied to norms and biases).", min=0.0)
    batch_size: int | None = _opt(None, "Sequences per micro-batch. None: the method's default (8 for scratch and "
                                  "lora; 4 for full, qlora, lora-8bit, which hold more memory per sequence).", min=1)
    batch_tokens: int | None = _opt(None, "Tokens per optimizer step; sets gradient accumulation from batch_size "
                                    "and the sequence length (wins over grad_accum).", min=1)
    grad_accum: int | None = _opt(None, "Micro-batches per optimizer step. None: the method's default (1 for scratch "
                                  "and lora, 2 for full, qlora, lora-8bit: 8 sequences per step either way).", min=1)
    seq_len: int | None = _opt(None, "Packed sequence length (default: the tokenizer settings' context_length).",
                               min=8)
    max_grad_norm: float | None = _opt(1.0, "Clip the gradient norm to this (None: no clipping).", min=0.0)
    eval_every: int | None = _opt(None, "Evaluate on the validation split every this many steps "
                                  "(default: about 10 times per run).", min=1)
    eval_at_start: bool = _opt(False, "Also evaluate before the first step, so curves show the starting point.")
    eval_batches: int = _opt(20, "Validation micro-batches per evaluation (None would be all; keep it small).", min=1)
    checkpoint_every: int | None = _opt(None, "Write a checkpoint every this many steps (default: at the end, "
                                        "on stop and on pause).", min=1)
    keep_checkpoints: int = _opt(2, "How many checkpoints to keep (oldest are deleted).", min=1)
    seed: int = _opt(0, "Seed for data order, dropout and initialisation of adapters.")
    gradient_checkpointing: bool | None = _opt(None, "Recompute activations in the backward pass: less memory, ~30% "
                                               "slower. None: on when the model card's memory estimate says a step "
                                               "would not fit without it, and for QLoRA on a GPU when activations "
                                               "would be most of the memory.")
    compile: bool | None = _opt(None, "torch.compile the model (faster on GPUs after a warm-up; slow to start on "
                                "CPUs). None: on with CUDA, off elsewhere. If compiling fails, training goes on "
                                "uncompiled and says so.")
    attention: str = _opt("auto", "Attention kernel for packed documents. auto: flash_varlen when flash_attn is "
                          "installed (CUDA), else flex (CUDA), else sdpa.",
                          choices=["auto", "flash_varlen", "flex", "sdpa"])
    optimizer: str = _opt("auto", "AdamW, or bitsandbytes' paged 8-bit AdamW (a quarter of the optimizer memory). "
                          "auto: paged 8-bit for QLoRA on a GPU, and when the card's estimate does not fit otherwise.",
                          choices=["auto", "adamw", "paged_adamw_8bit"])
    auto_batch: bool = _opt(True, "On out-of-memory, halve the micro-batch and double gradient accumulation, so the "
                            "effective batch and the step count stay the same, and go on.")
    sample_prompt: str | None = _opt(None, "Text to continue at every evaluation, shown as a sample (for chat data: "
                                     "the user's message). None: no samples.")
    background: bool | None = _opt(None, "Run in a worker thread so the notebook stays usable (default: yes in "
                                   "JupyterLab, no in scripts, Colab and VS Code).")
    log_to: str | None = _opt(None, "Experiment trackers that also receive the run's metrics: 'tensorboard', "
                              "'trackio', or both ('tensorboard,trackio' or a list). None: only nbtune's own "
                              "metrics.jsonl. Needs the tracker's package (pip install 'nbtune[trackers]').")
    log_dir: str | None = _opt(None, "TensorBoard: write event files to <log_dir>/<session folder name>/<run id> "
                               "(e.g. one shared folder for a class). None: runs/<run id>/tensorboard in the session.")
    log_project: str | None = _opt(None, "Trackio: the project the run is logged to, as '<session folder name>/"
                                   "<run id>' (None: the session folder's name). Trackio stores it under "
                                   "TRACKIO_DIR (default ~/.cache/huggingface/trackio).")

    def __post_init__(self) -> None:
        if isinstance(self.log_to, (list, tuple)):  # log_to=["tensorboard", "trackio"] is stored as one string
            self.log_to = ",".join(str(name) for name in self.log_to)
        super().__post_init__()

    def _check(self) -> None:
        for name in tracker_names(self.log_to):
            if name not in TRACKERS:
                close = difflib.get_close_matches(name, TRACKERS, n=1)
                raise ConfigError(f"{name!r} is not a tracker nbtune knows", column="log_to",
                                  fix=(f"did you mean {close[0]!r}? " if close else "")
                                  + f"use {' or '.join(map(repr, TRACKERS))}, or a comma-separated list of them")

    def for_method(self, method: str) -> TrainConfig:
        """A copy with the settings left at None (learning rate, batch) filled in with `method`'s defaults."""
        defaults = METHOD_DEFAULTS[method]
        missing = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        return self.replace(**missing) if missing else self


TRACKERS = ("tensorboard", "trackio")


def tracker_names(log_to: str | None) -> list[str]:
    """'tensorboard, trackio' -> ['tensorboard', 'trackio'] (no duplicates, in the order given)."""
    names = [part.strip().lower() for part in (log_to or "").split(",") if part.strip()]
    return list(dict.fromkeys(names))


# What a run uses when learning_rate / batch_size / grad_accum are left at None, per method. Sources:
# - lora / qlora / lora-8bit, 2e-4: the QLoRA paper (Dettmers et al. 2023, appendix: 2e-4 for 7B-13B models) and
#   Unsloth's LoRA hyperparameters guide ("2e-4 as a starting point for LoRA/QLoRA"; batch 2 x accumulation 4);
# - full, 2e-5: TRL's SFT examples and trainer (`trl sft --learning_rate 2.0e-5`; SFTConfig's default), about a
#   tenth of LoRA's rate because every weight moves;
# - scratch, 1e-3: nanoGPT's small character model (config/train_shakespeare_char.py) and nbtune's presets, which
#   are 1M-40M parameters (larger models want less: GPT-2 124M used 6e-4);
# - batch: 8 sequences per optimizer step for every method; the methods that keep more memory per sequence (full:
#   AdamW state for every weight; qlora / lora-8bit: dequantized activations) take them as 4 x 2 micro-batches.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "scratch": {"learning_rate": 1e-3, "batch_size": 8, "grad_accum": 1},
    "full": {"learning_rate": 2e-5, "batch_size": 4, "grad_accum": 2},
    "lora": {"learning_rate": 2e-4, "batch_size": 8, "grad_accum": 1},
    "qlora": {"learning_rate": 2e-4, "batch_size": 4, "grad_accum": 2},
    "lora-8bit": {"learning_rate": 2e-4, "batch_size": 4, "grad_accum": 2},
}


@dataclass
class LabConfig(_Config):
    """The scratch-vs-fine-tune lab: both paths on the same data, at several data fractions, matched compute."""

    base: str = _opt("default", "The pretrained model of the fine-tune arm (folder or hub id; 'default' is the "
                     "embedded SmolLM2-135M-Instruct).")
    method: str = _opt("lora", "How the fine-tune arm trains.", choices=["full", "lora", "qlora", "lora-8bit"])
    fractions: tuple = _opt((0.1, 0.3, 1.0), "Shares of the training rows each pair of arms gets (the same "
                            "held-out rows are used throughout).")
    scratch_preset: str = _opt("tiny", "Size of the from-scratch model.", choices=["tiny", "small", "medium", "large"])
    scratch_tokenizer: str = _opt("own", "'own': a new BPE tokenizer trained on the arm's data; 'base': the "
                                  "pretrained model's tokenizer.", choices=["own", "base"])
    scratch_vocab_size: int = _opt(2048, "Vocabulary of the scratch arm's own tokenizer.", min=260)
    finetune_steps: int = _opt(4, "Optimizer steps of the fine-tune arm; its compute sets the budget.", min=1)
    compute_ratio: float = _opt(1.0, "The scratch arm may use this many times the fine-tune arm's FLOPs.",
                                min=0.01)
    max_scratch_steps: int = _opt(1000, "Upper bound on the scratch arm's steps (keeps the lab short on CPUs).",
                                  min=1)
    scratch_compute: tuple | None = _opt(None, "Compute sweep: on all the data, also train the scratch arm with these "
                                         "multiples of the fine-tune arm's FLOPs, e.g. (1, 10, 100), and say at which "
                                         "one it matches the fine-tune (None: no sweep; each multiple is one more "
                                         "scratch run, capped at max_scratch_steps).")
    seq_len: int = _opt(128, "Packed sequence length for both arms.", min=16)
    batch_size: int = _opt(4, "Sequences per step for both arms.", min=1)
    finetune_lr: float = _opt(2e-4, "Peak learning rate of the fine-tune arm.", min=0.0)
    scratch_lr: float = _opt(3e-3, "Peak learning rate of the scratch arm.", min=0.0)
    evaluations: int = _opt(3, "Evaluations per arm (plus one before training).", min=1)
    max_eval_rows: int = _opt(32, "Held-out rows scored at each evaluation (the same rows for every arm).", min=4)
    seed: int = _opt(0, "Seed of the data subsets, the initialisations and the data order.")

    def _check(self) -> None:
        bad = [f for f in self.fractions if not 0 < float(f) <= 1]
        if bad or not self.fractions:
            raise ConfigError(f"fractions must be in (0, 1], got {list(self.fractions)!r}", column="fractions",
                              fix="use e.g. (0.1, 0.3, 1.0)")
        if self.scratch_compute is not None and (not self.scratch_compute or any(
                isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0 for m in self.scratch_compute)):
            raise ConfigError(f"scratch_compute must be positive multiples, got {list(self.scratch_compute)!r}",
                              column="scratch_compute", fix="use e.g. (1, 10, 100), or None for no sweep")
