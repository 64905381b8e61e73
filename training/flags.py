"""Every flag `fusar-train --help` shows, from TRL's `SFTConfig` and `ModelConfig`, either works or is refused with
one line before any work. `TrainingArguments`' own flags are the Trainer's and work as there, but for those in
`REFUSED`. `tests/test_flags.py` walks TRL's fields against these tables, so a TRL release that adds one fails there
until it is placed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .launch import WORLD_SIZE_VARIABLES

GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")  # around the assistant's turns in a training template

# TRL's own fields (SFTConfig beyond TrainingArguments, and ModelConfig) that work, and how.
HONOURED = {
    "model_name_or_path": "the model (`--model` is its alias)",
    "model_revision": "the revision of a Hub model and processor",
    "dtype": "the weights' dtype (and QLoRA's compute dtype)",
    "attn_implementation": "the language model's attention",
    "use_peft": "LoRA on the language model (plus the anchor module in full precision where it trains)",
    "lora_r": "LoraConfig.r", "lora_alpha": "LoraConfig.lora_alpha", "lora_dropout": "LoraConfig.lora_dropout",
    "lora_target_modules": "LoraConfig.target_modules (default: every linear layer of the language model)",
    "lora_modules_to_save": "LoraConfig.modules_to_save, beside the anchor module where it trains",
    "use_rslora": "LoraConfig.use_rslora", "use_dora": "LoraConfig.use_dora",
    "load_in_4bit": "QLoRA: the base in 4 bits (BitsAndBytesConfig), vision tower, anchor module and head kept out",
    "load_in_8bit": "the base in 8 bits, the same modules kept out",
    "bnb_4bit_quant_type": "BitsAndBytesConfig.bnb_4bit_quant_type (nf4 or fp4)",
    "use_bnb_nested_quant": "BitsAndBytesConfig.bnb_4bit_use_double_quant",
    "bnb_4bit_quant_storage": "BitsAndBytesConfig.bnb_4bit_quant_storage",
    "chat_template_path": "the chat template used for training (needs {% generation %} markers for the answer-only loss)",
    "max_length": "each example cut to this many tokens (from the end; an image's tokens must fit)",
    "pad_to_multiple_of": "batches padded to a multiple of this",
    "assistant_only_loss": "the loss on the answers only (default true here, the paper's); false: on every token",
    "activation_offloading": "SFTTrainer's activation offloading to CPU memory (on a GPU)",
    "loss_type": "nll only (the model's own loss)",
}

# Flags refused when set to anything but their default, and why.
REFUSED = {
    "model_init_kwargs": "fusar-train loads the model itself: use --dtype, --attn_implementation, --model_revision",
    "trust_remote_code": "FUSAR-GPT and the bases it wraps load without remote code",
    "router_aux_loss_coef": "for mixture-of-experts language models, which FUSAR-GPT's bases are not",
    "dataset_text_field": "triplet rows are conversations (`messages`), not a text field",
    "dataset_kwargs": "the collator prepares the rows (images, anchors); there is nothing for TRL to prepare",
    "dataset_num_proc": "the collator prepares the rows; TRL's dataset preparation does not run",
    "eos_token": "the processor's own end-of-turn token ends each answer",
    "pad_token": "the processor's own pad token pads",
    "truncation_mode": "only keep_start: cutting from the start would cut the image's tokens",
    "shuffle_dataset": "the Trainer already draws the rows in a new random order every epoch",
    "packing": "one sequence per image: packed rows would mix images and anchors",
    "packing_strategy": "packing is not supported",
    "padding_free": "one padded sequence per image: the anchors are per image",
    "eval_packing": "packing is not supported",
    "completion_only_loss": "for prompt-completion datasets; triplet rows are conversations (see --assistant_only_loss)",
    "lora_target_parameters": "for mixture-of-experts parameters; use --lora_target_modules",
    "lora_task_type": "FUSAR-GPT's LoRA uses PEFT's generic wrapper (the image inputs pass through it)",
    # TrainingArguments' flags that the two stages set themselves
    "num_train_epochs": "each stage has its own: --stage1_epochs, --stage2_epochs",
    "learning_rate": "each stage has its own: --stage1_learning_rate, --stage2_learning_rate",
    "remove_unused_columns": "the collator needs the image and anchor columns",
    "use_liger_kernel": "Liger patches the backbone's loss, and FUSAR-GPT modulates the image features before it",
    "do_predict": "fusar-eval evaluates a trained checkpoint",
}

# Defaults fusar-train sets over TRL's (`parse_arguments`): these behaviours are the recipe's, and the flags still work.
RECIPE_DEFAULTS = {"assistant_only_loss": True, "remove_unused_columns": False}

# Two names of one setting (transformers 5 renamed it): given both with different values, transformers keeps one and
# drops the other without a word.
SPELLINGS = [("gradient_checkpointing", "activation_checkpointing")]

# Optional packages a flag needs, and the extra that installs them.
EXTRAS = {"deepspeed": ("deepspeed", "deepspeed")}


def default_of(name: str, dataclasses_: tuple):
    """A flag's default before any --config or command line: TRL's, then the machine's and the recipe's."""
    from .launch import machine_defaults

    overrides = {**machine_defaults(), **RECIPE_DEFAULTS}
    if name in overrides:
        return overrides[name]
    field = next(c.__dataclass_fields__[name] for c in dataclasses_ if name in c.__dataclass_fields__)
    return field.default_factory() if callable(field.default_factory) else field.default


def given_flags(argv: list[str]) -> dict:
    """The flags a command line and the keys its --config file give, as the dataclasses spell them, with the values
    as given (a flag without a value: True); the command line's over the file's."""
    import yaml

    given = {}
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        try:
            with open(argv[argv.index("--config") + 1]) as file:
                given = dict(yaml.safe_load(file) or {})
        except (OSError, yaml.YAMLError, TypeError, ValueError):
            pass  # TrlParser reports an unreadable config in its own words
    for position, token in enumerate(argv):
        if token.startswith("--"):
            name, equals, value = token[2:].partition("=")
            following = argv[position + 1] if position + 1 < len(argv) else "--"
            given[name.replace("-", "_")] = value if equals else True if following.startswith("--") else following
    return given


def check_given(given: dict) -> None:
    """Before the flags are parsed: a refused flag typed at all, even at its default value (which fusar-train would
    ignore); two spellings of one setting that disagree; a flag whose package is missing."""
    import importlib.util

    refused = sorted(set(given) & set(REFUSED))
    if refused:
        raise ValueError(f"--{refused[0]}: not supported by fusar-train ({REFUSED[refused[0]]})")
    for old, new in SPELLINGS:
        if old in given and new in given and _as_bool(given[old]) != _as_bool(given[new]):
            raise ValueError(f"--{old} {given[old]} and --{new} {given[new]}: two names of one setting that disagree "
                             "(the command line and --config together); keep one")
    for flag, (package, extra) in EXTRAS.items():
        if given.get(flag) and importlib.util.find_spec(package) is None:
            raise ValueError(f"--{flag} {given[flag]}: {package} is not installed here; pip install "
                             f"\"fusar-gpt[{extra}]\" (or python -m pip install -e \".[{extra}]\" in a checkout)")


def _as_bool(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "y", "t", "on")


def check_flags(training_args, model_args) -> None:
    """One line for the first refused flag set (to anything but its default), or a combination that cannot run."""
    for name, why in REFUSED.items():
        args = training_args if hasattr(training_args, name) else model_args
        if getattr(args, name) != default_of(name, (type(training_args), type(model_args))):
            raise ValueError(f"--{name} {getattr(args, name)}: not supported by fusar-train ({why})")
    if training_args.torch_compile:
        raise ValueError("--torch_compile true: not supported yet: the compiled model fails in its first training "
                         "step (RuntimeError: setStorage ... out of bounds, torch 2.13)")
    if training_args.fsdp and not any(int(os.environ.get(name, "1")) > 1 for name in WORLD_SIZE_VARIABLES):
        raise ValueError("--fsdp: FSDP shards the model across processes and this run is one; launch several "
                         "(accelerate launch --config_file configs/accelerate/fsdp.yaml, or torchrun --nproc_per_node N)")
    if training_args.hub_model_id:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(training_args.hub_model_id)
        except HFValidationError:
            raise ValueError(f"--hub_model_id {training_args.hub_model_id}: expected name or user/name (letters, "
                             "digits, '-', '_', '.')") from None
    if model_args.use_peft and not model_args.lora_r >= 1:
        raise ValueError(f"--lora_r {model_args.lora_r}: expected a LoRA rank of 1 or more")
    if model_args.use_peft and not 0 <= model_args.lora_dropout < 1:
        raise ValueError(f"--lora_dropout {model_args.lora_dropout}: expected a share in [0, 1)")
    if training_args.activation_offloading and not torch.cuda.is_available():
        raise ValueError("--activation_offloading true: it moves activations from a GPU to CPU memory; there is no GPU")
    if training_args.loss_type != "nll":
        raise ValueError(f"--loss_type {training_args.loss_type}: fusar-train trains with the model's own loss (nll)")
    template = training_args.chat_template_path
    if template and training_args.assistant_only_loss:
        if not GENERATION_MARKER.search(Path(template).read_text()):
            raise ValueError(f"--chat_template_path {template}: no {{% generation %}} markers around the assistant's "
                             "turns, which the answer-only loss (--assistant_only_loss, default true) needs to find the "
                             "answers (without them no token would be trained); add them, or --assistant_only_loss false")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        bits = 4 if model_args.load_in_4bit else 8
        if not model_args.use_peft:
            raise ValueError(f"--load_in_{bits}bit: quantised weights are not trained directly; add --use_peft true "
                             "(QLoRA)")
        if model_args.model_name_or_path == "tiny":
            raise ValueError(f"--load_in_{bits}bit: the tiny model is built in memory; quantisation loads saved "
                             "weights: give --model_name_or_path a base or a FUSAR-GPT checkpoint")
