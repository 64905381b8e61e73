"""Two-stage supervised fine-tuning of FUSAR-GPT with TRL's SFTTrainer, PEFT and Accelerate.

Stage 1, knowledge injection: captions; trains the anchor module, and the language model (LoRA, or all of it
without PEFT) when `--stage1_train_language_model` (the authors' released code does; the paper's text trains the
anchor module only). Stage 2, task execution: the other tasks; trains the language model (LoRA with `--use_peft`)
with the anchor module frozen, starting from stage 1's result.

    accelerate launch train_sft.py --config configs/tiny_cpu.yaml
    fusar-train --dataset_name outputs/simulated --model_name_or_path tiny --output_dir outputs/fusar-tiny
"""

from __future__ import annotations

import shared_machine  # noqa: F401  (before torch: its OpenMP threads then sleep when they wait)
import hub_kernels  # noqa: F401  (before peft: bitsandbytes then looks up no Hub kernel unasked)

import dataclasses
import gc
import json
import os
import shutil
import sys
import warnings
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, Trainer, TrainerState, set_seed
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_quantization_config

import modeling_fusar  # noqa: F401  (registers the Auto classes)
from command_line import command, local_or_hub_id
from dataset_scripts.loading import load_triplet_dataset
from dataset_scripts.schema import FEATURES
from modeling_fusar import FusarForConditionalGeneration
from output_folders import RUN_FILES, RUN_MARKERS, check_replaceable
from processing import FusarProcessor
from processing.base import load_base_processor
from training.checkpoints import check_explicit_checkpoint, latest_whole_checkpoint
from training.collator import FusarDataCollator
from training.flags import GENERATION_MARKER, RECIPE_DEFAULTS, check_flags, check_given, given_flags
from training.launch import check_data_parallel, machine_defaults
from training.plan import planned_stages, stage_steps, stage_tasks, trains_anchor_module
from training.streaming import Passes, StreamPosition, process_share, tasks_found
from training.report import write_model_card, write_loss_curve

# TRL 1.16 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates: a warning in every LoRA run that
# no option of ours can avoid.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass
class FusarArguments:
    dataset_name: str = field(default="outputs/simulated", metadata={"help": "triplet dataset: local folder or Hub id"})
    dataset_streaming: bool = field(default=False, metadata={
        "help": "TRL's flag: read the dataset as it trains (Hub id or local parquet shards), each process its own "
                "shards; each stage then runs by steps (--max_steps, --stage1_max_steps, --stage2_max_steps)"})
    dataset_shuffle_buffer: int = field(default=1000, metadata={
        "help": "rows in the shuffle buffer of a streamed dataset (reseeded every pass)"})
    stage: str = field(default="both", metadata={"help": "1, 2 or both", "choices": ["1", "2", "both"]})
    stage1_epochs: float = 30.0
    stage1_learning_rate: float = 1e-4
    stage2_epochs: float = 5.0
    stage2_learning_rate: float = 1e-5
    stage1_max_steps: int | None = field(default=None, metadata={
        "help": "optimizer steps of stage 1, instead of its epochs (default: --max_steps, for each stage)"})
    stage2_max_steps: int | None = field(default=None, metadata={
        "help": "optimizer steps of stage 2, instead of its epochs (default: --max_steps, for each stage)"})
    stage1_tasks: list[str] = field(default_factory=lambda: ["caption"], metadata={
        "help": "tasks whose rows feed stage 1 (knowledge injection; the paper: captions)"})
    stage2_tasks: list[str] | None = field(default=None, metadata={
        "help": "tasks whose rows feed stage 2 (default: every task not in stage 1)"})
    stage1_train_language_model: bool = field(default=True, metadata={"help": "also train the language model in "
                                                                               "stage 1 (the authors' released code)"})
    stage2_train_anchor_module: bool = field(default=False, metadata={
        "help": "also train the anchor module in stage 2 (the paper freezes it); for datasets without stage-1 rows"})
    use_anchors: bool = field(default=True, metadata={"help": "False: the same run without anchors (ablation)"})
    train_vision_projector: bool = field(default=False, metadata={
        "help": "also train the vision projector (Qwen's visual.merger, LLaVA's multi_modal_projector) in every stage: "
                "for a base whose projector never learnt, like tiny's (the paper freezes the whole visual module)"})
    anchor_learning_rate_scale: float = field(default=1.0, metadata={
        "help": "the anchor module's learning rate as a multiple of its stage's (the language model's)"})
    anchor_dropout: float | None = field(default=None, metadata={
        "help": "FusarConfig.anchor_dropout for this run: the share of training images whose anchors are left out "
                "(default: the model's, 0 for a new one)"})
    anchor_sigma: float | None = field(default=None, metadata={
        "help": "FusarConfig.anchor_sigma of a new anchor module (tiny or a base; a checkpoint keeps its own)"})
    anchor_hidden_size: int | None = field(default=None, metadata={
        "help": "FusarConfig.anchor_hidden_size of a new anchor module (tiny or a base; a checkpoint keeps its own)"})
    merge_lora: bool = field(default=True, metadata={"help": "merge the final LoRA into the weights, else keep it "
                                                              "as an adapter"})
    vision_attn_implementation: str = field(default="varlen", metadata={
        "help": "the vision tower's windowed attention: varlen (one flash call on CUDA, exact sdpa elsewhere) or base",
        "choices": ["varlen", "base"]})
    vision_feature_cache_gb: float = field(default=2.0, metadata={
        "help": "memory for each image's encoder features while the image encoder is frozen (encoded once per run, "
                "reused every later epoch); 0 turns the cache off"})
    vision_feature_cache_disk_gb: float = field(default=50.0, metadata={
        "help": "then this much of a temporary memory-mapped file (removed when the stage ends)"})
    example_cache_gb: float = field(default=1.0, metadata={
        "help": "memory for each training example's tokens and pixel values, processed once per stage and reused "
                "every later epoch; 0 processes every batch anew"})
    tiny_hidden_size: int = 128
    tiny_layers: int = 2
    max_train_examples: int | None = field(default=None, metadata={"help": "use at most this many rows per stage"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace the run already in --output_dir "
                                                                         "(only files fusar-train writes are there)"})

    def __post_init__(self):
        if self.anchor_dropout is not None and not 0 <= self.anchor_dropout < 1:
            raise ValueError(f"--anchor_dropout {self.anchor_dropout}: expected a share in [0, 1)")
        if self.anchor_sigma is not None and not self.anchor_sigma > 0:
            raise ValueError(f"--anchor_sigma {self.anchor_sigma}: expected a width > 0, in patches of the grid")
        if self.anchor_hidden_size is not None and self.anchor_hidden_size < 1:
            raise ValueError(f"--anchor_hidden_size {self.anchor_hidden_size}: expected a positive width")
        if not self.anchor_learning_rate_scale > 0:
            raise ValueError(f"--anchor_learning_rate_scale {self.anchor_learning_rate_scale}: expected a number > 0 "
                             "(a multiple of each stage's learning rate)")


@dataclass
class FusarModelConfig(ModelConfig):
    """TRL's model options, with the model named once: `--model_name_or_path` (TRL's name), `--model` its alias."""

    model_name_or_path: str = field(default="tiny", metadata={
        "help": "'tiny' (built offline), a base VLM (path / Hub id) or a FUSAR-GPT checkpoint", "aliases": ["--model"]})


class FusarSFTTrainer(SFTTrainer):
    """SFTTrainer with the model's own loss. TRL's fused LM-head loss reads `model.base_model(...).last_hidden_state`,
    which assumes the backbone alone takes the images; FUSAR-GPT modulates them in its own forward first."""

    def __init__(self, *args, anchor_learning_rate_scale: float = 1.0, stream_start: StreamPosition | None = None,
                 **kwargs):
        """`stream_start`: where a streamed stage starts reading (its `train_dataset` is this process's share)."""
        self.anchor_learning_rate_scale, self.stream_start, self.stream = anchor_learning_rate_scale, stream_start, None
        super().__init__(*args, **kwargs)

    def get_train_dataloader(self):
        """A streamed stage: this process's share pass after pass (training/streaming.py), not prepared by
        Accelerate, which would split a share that is already this process's alone once more."""
        if self.stream_start is None:
            return super().get_train_dataloader()
        self.stream = Passes(self.train_dataset, self.stream_start)
        return torch.utils.data.DataLoader(self.stream, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                                           pin_memory=self.args.dataloader_pin_memory)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """A streamed stage already starts where its checkpoint stopped: nothing to skip."""
        return dataloader if self.stream_start is not None else super().get_resumed_dataloader(dataloader, num_batches)

    def _save_rng_state(self, output_dir: str) -> None:
        """Beside each process's RNG state, where a streamed stage's process is in its share."""
        super()._save_rng_state(output_dir)
        if self.stream is not None:
            self.stream.position().save(output_dir)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the anchor module's parameters in groups of their own at the scaled rate
        (the scheduler then scales every group alike)."""
        optimizer = super().create_optimizer(model)
        if self.anchor_learning_rate_scale == 1.0:
            return optimizer
        anchor = {id(p) for name, p in (model or self.model).named_parameters() if "anchor_module." in name}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in anchor]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in anchor]
                optimizer.add_param_group({**group, "params": moved, "lr": group["lr"] * self.anchor_learning_rate_scale})
        return optimizer

    def create_model_card(self, *args, **kwargs):
        """None in the stage folders: TRL's would describe a stage as "a fine-tuned version of [None]"; the run's own
        card (training/report.py) is written beside the final model."""


def load_triplets(name: str, streaming: bool = False) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """The dataset, checked for the triplet schema before any training starts; streamed, read only as it trains
    (whether each stage has rows is `check_plan`'s)."""
    try:
        dataset = load_triplet_dataset(name, streaming=streaming)
    except Exception as error:  # datasets raises many kinds here; all mean "cannot use this"
        raise ValueError(f"--dataset_name {name}: cannot load it as a dataset ({error})") from error
    if "train" not in dataset or not streaming and len(dataset["train"]) == 0:
        raise ValueError(f"--dataset_name {name}: no rows in a 'train' split")
    missing = sorted(set(FEATURES) - set(dataset["train"].features or {}))
    if missing:
        raise ValueError(f"--dataset_name {name}: not a triplet dataset, columns {missing} are missing "
                         "(build one with fusar-data)")
    return dataset


TOKENIZER_ROWS = 2000  # tiny's tokenizer learns from a streamed dataset's first rows, not from reading it all


def load_model(args: FusarArguments, dataset, model_args: ModelConfig | None = None, chat_template_path=None):
    """(model, processor) for `--model_name_or_path`: the tiny offline default, a FUSAR-GPT checkpoint, or a base to
    wrap; `chat_template_path` (TRL's flag) replaces the processor's template."""
    model_args = model_args or FusarModelConfig()
    if model_args.model_name_or_path == "tiny":
        from modeling_fusar.tiny import DEFAULT_CORPUS, tiny_qwen2_5_vl, train_tokenizer

        rows = dataset["train"].select_columns(["messages"])
        if args.dataset_streaming:
            rows = rows.take(TOKENIZER_ROWS)
        corpus = [m["content"] for row in rows for m in row["messages"]]
        base, base_processor = tiny_qwen2_5_vl(train_tokenizer([DEFAULT_CORPUS, *corpus], vocab_size=1024),
                                               hidden_size=args.tiny_hidden_size, layers=args.tiny_layers)
        model = FusarForConditionalGeneration.from_base(base, vision_attn_implementation=args.vision_attn_implementation,
                                                        **new_anchor_module(args), **anchor_dropout(args))
        processor = FusarProcessor.from_base(base_processor)  # its template has the markers
    else:
        source = model_args.model_name_or_path
        model = load_weights(source, args, model_args, quantized=True)
        # Any layout of a base: a saved processor, or a Hub snapshot (preprocessor_config.json, chat_template.json...).
        processor = AutoProcessor.from_pretrained(source, revision=model_args.model_revision) \
            if is_fusar_checkpoint(source, model_args) else \
            FusarProcessor.from_base(load_base_processor(source, revision=model_args.model_revision))
    if chat_template_path:
        processor.chat_template = Path(chat_template_path).read_text()
    elif not GENERATION_MARKER.search(processor.chat_template or ""):  # the answer-only loss needs these markers
        processor.chat_template = training_chat_template(model.config.base_config.model_type)
    return model, processor


def is_fusar_checkpoint(source, model_args: ModelConfig) -> bool:
    return AutoConfig.from_pretrained(source, revision=model_args.model_revision).model_type == "fusar_gpt"


def load_weights(source, args: FusarArguments, model_args: ModelConfig, quantized: bool):
    """FUSAR-GPT from a checkpoint or around a base, in `--dtype`; in 4 / 8 bits when asked and `quantized` (never
    when merging: LoRA is merged into full-precision weights)."""
    options = {"dtype": model_args.dtype, "attn_implementation": model_args.attn_implementation,
               "vision_attn_implementation": args.vision_attn_implementation, "revision": model_args.model_revision,
               **anchor_dropout(args)}
    config = AutoConfig.from_pretrained(source, revision=model_args.model_revision)
    quantization = get_quantization_config(model_args) if quantized else None
    if quantization is not None:
        quantization.llm_int8_skip_modules = full_precision_modules(config)
        if model_args.load_in_4bit and model_args.dtype in (None, "auto"):
            quantization.bnb_4bit_compute_dtype = torch.float32
        options["quantization_config"] = quantization
    shape = new_anchor_module(args)
    if config.model_type == "fusar_gpt":
        if shape:
            raise ValueError(f"--model_name_or_path {source} is a FUSAR-GPT checkpoint with its own anchor module: "
                             f"{', '.join('--' + k for k in shape)} apply only to a new one (a base model or tiny)")
        return AutoModelForImageTextToText.from_pretrained(source, **options)
    return FusarForConditionalGeneration.from_base(source, **options, **shape)


def anchor_dropout(args: FusarArguments) -> dict:
    """FusarConfig.anchor_dropout for this run, when given (a config field any model takes, new or trained)."""
    return {} if args.anchor_dropout is None else {"anchor_dropout": args.anchor_dropout}


def new_anchor_module(args: FusarArguments) -> dict:
    """The FusarConfig fields given for a new anchor module (the config's defaults otherwise)."""
    given = {"anchor_sigma": args.anchor_sigma, "anchor_hidden_size": args.anchor_hidden_size}
    return {name: value for name, value in given.items() if value is not None}


def full_precision_modules(config) -> list[str]:
    """Full module names kept out of quantisation: the vision tower and projector (every part of the backbone beside
    its language model), the LM head and the anchor module. transformers 5 matches these from the start of the full
    name: a bare "visual" would keep nothing out."""
    with torch.device("meta"):  # the module tree only, no memory
        skeleton = AutoModelForImageTextToText.from_config(config)
    fusar = isinstance(skeleton, FusarForConditionalGeneration)
    vlm, prefix = (skeleton.vlm, "vlm.") if fusar else (skeleton, "")
    decoder = vlm.get_decoder()
    kept = [f"{prefix}model.{name}" for name, child in vlm.model.named_children() if child is not decoder]
    return kept + [f"{prefix}lm_head"] + (["anchor_module"] if fusar else [])


def is_quantized(model_args: ModelConfig) -> bool:
    return bool(model_args.load_in_4bit or model_args.load_in_8bit)


def full_precision_result(trained, source, args: FusarArguments, model_args: ModelConfig):
    """A stage trained on a quantised base, as full-precision weights: `source` reloaded in `--dtype`, then the LoRA
    merged into it (merging into 4-bit weights would round the update away) or the trained anchor module copied."""
    import tempfile

    from peft import PeftModel

    full = load_weights(source, args, model_args, quantized=False)
    if not isinstance(trained, PeftModel):  # only the anchor module trained (full precision all along)
        full.anchor_module.load_state_dict(trained.anchor_module.state_dict())
        return full
    with tempfile.TemporaryDirectory(prefix="fusar-adapter-") as folder:
        trained.save_pretrained(folder)
        return PeftModel.from_pretrained(full, folder).merge_and_unload()


def training_chat_template(model_type: str) -> str:
    """TRL's version of a family's chat template with `{% generation %}` markers around the assistant's turns."""
    template = resources.files("trl") / "chat_templates" / f"{model_type}_training.jinja"
    if not template.is_file():
        raise ValueError(f"the {model_type} processor's chat template has no {{% generation %}} markers and TRL has no "
                         "training template for it; set --chat_template_path to a template with them")
    return template.read_text()


def parameters_sharded() -> bool:
    """FSDP or DeepSpeed ZeRO-3: every process holds a shard of each weight, so a model is saved through the Trainer
    (which gathers the whole weights) and handed from one stage to the next through the files it writes."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    # Read from the launch (accelerate sets these before any Accelerator exists), not from the PartialState.
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or is_deepspeed_zero3_enabled() or \
        os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"


def save_result(trainer, model, processor, folder: Path) -> None:
    """`model` and the processor to `folder`, written by the main process only (through the Trainer when sharded)."""
    if parameters_sharded():
        trainer.save_model(str(folder))  # gathers on every process, writes on the main one
    elif trainer.args.should_save:
        model.save_pretrained(folder)
    if trainer.args.should_save:
        processor.save_pretrained(folder)
    trainer.accelerator.wait_for_everyone()


def check_plan(stages: tuple[int, ...], model, dataset, args: FusarArguments, model_args: ModelConfig) -> None:
    """Before any training: every stage has rows, anchors given to the model can have an effect, and LoRA is merged
    only where whole weights exist."""
    if model_args.use_peft and parameters_sharded():
        raise ValueError("LoRA under FSDP or DeepSpeed ZeRO-3 is not supported: merging it between the stages needs "
                         "whole weights, and the LoRA recipes fit one GPU per process (README, On GPUs); launch them "
                         "with configs/accelerate/multi_gpu.yaml or deepspeed_zero2.yaml")
    if args.dataset_streaming:  # read until each stage has a row, not whole
        present = tasks_found(dataset["train"], [stage_tasks(stage, args) for stage in stages])
    else:
        present = set(dataset["train"].unique("task"))
    for stage in stages:
        tasks = stage_tasks(stage, args)
        if not present & set(tasks):
            its_tasks = f" (its tasks: {', '.join(sorted(present))})"  # a stream lacking one was read whole
            raise ValueError(
                f"stage {stage}: the dataset has no {'/'.join(tasks)} rows to train on{its_tasks}; choose "
                f"--stage{stage}_tasks from its tasks" + ("" if stage == 2 else ", or run --stage 2 "
                                                                                "--stage2_train_anchor_module true"))
    untrained = not model.anchor_module.film[-1].weight.any()  # a fresh anchor module: every anchor has no effect
    if args.use_anchors and untrained and not any(trains_anchor_module(stage, args) for stage in stages):
        raise ValueError("the anchors would do nothing: this run never trains the anchor module (stage 2 freezes it) "
                         "and the model's is untrained; pass --stage2_train_anchor_module true, run stage 1 too "
                         "(--stage both with --stage1_tasks your dataset has), or --use_anchors false for a run "
                         "without anchors")


# The layers between the vision tower and the language model: Qwen2-VL / Qwen2.5-VL's, LLaVA's.
PROJECTORS = ("merger", "multi_modal_projector")


def is_projector(name: str) -> bool:
    return any(f".{projector}." in name for projector in PROJECTORS)


def set_trainable(model, stage: int, args: FusarArguments):
    """Without PEFT, choose the trained parameters here (with PEFT, the LoRA config does)."""
    train_language_model = stage == 2 or args.stage1_train_language_model
    for name, parameter in model.named_parameters():
        in_language_model = ".language_model." in name or name.startswith("vlm.lm_head")
        parameter.requires_grad = (
            (name.startswith("anchor_module.") and trains_anchor_module(stage, args))
            or (in_language_model and train_language_model)
            or (args.train_vision_projector and is_projector(name))
        )


def peft_config(model, stage: int, args: FusarArguments, model_args: ModelConfig):
    from peft import LoraConfig

    train_lora = stage == 2 or args.stage1_train_language_model
    if not model_args.use_peft or not train_lora:
        return None
    to_save = (["anchor_module"] if trains_anchor_module(stage, args) else []) + list(model_args.lora_modules_to_save or [])
    if args.train_vision_projector:
        to_save += [p for p in PROJECTORS if any(name.endswith(f".{p}") for name, _ in model.named_modules())]
    return LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=model_args.lora_target_modules or model.lora_target_modules,
                      modules_to_save=to_save or None, use_rslora=model_args.use_rslora, use_dora=model_args.use_dora)


def run_stage(stage: int, model, processor, dataset, args: FusarArguments, training_args: SFTConfig,
              model_args: ModelConfig, source=None):
    """Train one stage; `source` is where its weights were loaded from (a quantised run reloads it in full
    precision to merge into)."""
    tasks = stage_tasks(stage, args)
    stage_dir = str(Path(training_args.output_dir) / f"stage{stage}")
    checkpoint = resume_point(training_args.resume_from_checkpoint, stage_dir)
    stream_start = None
    if args.dataset_streaming:
        train = process_share(dataset["train"], tasks, training_args.seed, args.dataset_shuffle_buffer,
                              training_args.process_index, training_args.world_size)
        recipe = {"dataset_name": args.dataset_name, "tasks": list(tasks), "seed": training_args.seed,
                  "dataset_shuffle_buffer": args.dataset_shuffle_buffer}
        stream_start = stream_position(training_args, checkpoint, recipe)
    else:
        train = dataset["train"].filter(lambda task: task in tasks, input_columns="task")
    if args.max_train_examples:
        train = train.select(range(min(args.max_train_examples, len(train))))
    stage_args = dataclasses.replace(
        training_args, output_dir=stage_dir,
        num_train_epochs=getattr(args, f"stage{stage}_epochs"), learning_rate=getattr(args, f"stage{stage}_learning_rate"),
        max_steps=stage_steps(stage, args, training_args),
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, push_to_hub=False,
    )
    lora = peft_config(model, stage, args, model_args)
    if lora is None:
        set_trainable(model, stage, args)
    # In use only while the image encoder is frozen (checked at every batch); never when weights are sharded, where
    # each vision block's forward is a collective that every process must run together.
    if args.vision_feature_cache_gb > 0 and not parameters_sharded():
        model.enable_vision_feature_cache(memory_bytes=int(args.vision_feature_cache_gb * 2**30),
                                          disk_bytes=int(args.vision_feature_cache_disk_gb * 2**30),
                                          folder=stage_args.output_dir)
    evaluation = validation(dataset, tasks, stage_args)
    if evaluation is not None and len(evaluation) == 0:
        print(f"stage {stage}: the validation split has no {'/'.join(tasks)} rows; this stage is not evaluated",
              file=sys.stderr)
        stage_args, evaluation = dataclasses.replace(stage_args, eval_strategy="no"), None
    trainer = FusarSFTTrainer(model=model, args=stage_args, train_dataset=train, eval_dataset=evaluation,
                              processing_class=processor, peft_config=lora,
                              anchor_learning_rate_scale=args.anchor_learning_rate_scale, stream_start=stream_start,
                              data_collator=collator(processor, args, training_args))
    if lora is not None and not trains_anchor_module(stage, args):
        trainer.model.base_model.model.anchor_module.requires_grad_(False)
    try:
        if checkpoint is not None and finished(checkpoint):  # resumed, the Trainer would train one step more
            trainer._load_from_checkpoint(checkpoint)  # the Trainer's own loader: whole weights or adapter
            trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        else:
            trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        model.disable_vision_feature_cache()  # its temporary file goes with the stage
    if trainer.args.should_save:  # a stage that saved no checkpoint leaves no folder (one process looks)
        remove_if_empty(Path(stage_args.output_dir))
    model = trainer.model
    keep_adapter = lora is not None and not args.merge_lora and stage == planned_stages(args)[-1]  # the last stage's
    if is_quantized(model_args) and not keep_adapter:
        model = full_precision_result(model, source, args, model_args)
    elif lora is not None and not keep_adapter:
        model = model.merge_and_unload()  # stage 2 starts from stage 1's merged weights
    return model, trainer.state.log_history, trainer


def finished(checkpoint: str) -> bool:
    """Whether the stage's last step is in `checkpoint` (a run stopped after it, before the stage's end)."""
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    return state.max_steps > 0 and state.global_step >= state.max_steps


def stream_position(training_args: SFTConfig, checkpoint: str | None, recipe: dict) -> StreamPosition:
    """Where this process starts reading a streamed stage: where `checkpoint` stopped, else at the start."""
    rank, world_size = training_args.process_index, training_args.world_size
    if checkpoint is None or training_args.ignore_data_skip:
        return StreamPosition(rank=rank, world_size=world_size, recipe=recipe)
    return StreamPosition.load(checkpoint, rank, world_size, recipe)


def collator(processor, args: FusarArguments, training_args: SFTConfig) -> FusarDataCollator:
    """The training collator with TRL's sequence flags: --max_length, --pad_to_multiple_of, --assistant_only_loss."""
    multiple = training_args.pad_to_multiple_of
    return FusarDataCollator(processor, use_anchors=args.use_anchors, cache_bytes=int(args.example_cache_gb * 2**30),
                             max_length=training_args.max_length, assistant_only_loss=training_args.assistant_only_loss,
                             pad_to_multiple_of=None if multiple == "auto" else multiple)


def check_validation_split(dataset, training_args: SFTConfig) -> None:
    if training_args.eval_strategy != "no" and "validation" not in dataset:
        raise ValueError(f"--eval_strategy {training_args.eval_strategy.value}: the dataset has no 'validation' split "
                         f"(it has {', '.join(dataset)}); build it with one, or --eval_strategy no")


def validation(dataset, tasks: tuple[str, ...], stage_args: SFTConfig):
    """The stage's rows of the validation split, when the run evaluates during training (`--eval_strategy`)."""
    if stage_args.eval_strategy == "no":
        return None
    return dataset["validation"].filter(lambda task: task in tasks, input_columns="task")


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only an empty folder goes
    except OSError:  # absent, or holding checkpoints
        pass


def wants_resume(value) -> bool:
    return value not in (None, False, "false", "False")


def resume_point(value, stage_dir: str):
    """Where a stage resumes: an explicit checkpoint (checked by `prepare_output_dir`) when it is this stage's, else
    the stage's latest whole checkpoint, if any."""
    if not wants_resume(value):
        return None
    if value not in (True, "true", "True"):
        return value if Path(value).resolve().parent == Path(stage_dir).resolve() else None
    return latest_whole_checkpoint(Path(stage_dir))


def prepare_output_dir(args: FusarArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    """Before any work: a resume names a checkpoint of this run; a new run never mixes with an old one's files."""
    output, resume = Path(training_args.output_dir), training_args.resume_from_checkpoint
    if wants_resume(resume):
        if resume not in (True, "true", "True"):
            check_explicit_checkpoint(resume, output, args.stage)
        return
    if check_replaceable(output, overwrite=args.overwrite_output_dir, owned=RUN_FILES, tool="fusar-train",
                         flag="--resume_from_checkpoint true to continue it, or --overwrite_output_dir true",
                         markers=RUN_MARKERS, inputs=[model_args.model_name_or_path, args.dataset_name]):
        shutil.rmtree(output)  # the old run's weights, checkpoints and stage-1 model must not outlive it


def check_arguments(args: FusarArguments, training_args: SFTConfig) -> None:
    """Numbers and integrations that would fail only once the model is built, refused before anything is written."""
    from transformers.integrations import get_available_reporting_integrations

    positive = {"--per_device_train_batch_size": training_args.per_device_train_batch_size,
                "--gradient_accumulation_steps": training_args.gradient_accumulation_steps,
                "--stage1_epochs": args.stage1_epochs, "--stage2_epochs": args.stage2_epochs,
                "--stage1_learning_rate": args.stage1_learning_rate, "--stage2_learning_rate": args.stage2_learning_rate,
                "--tiny_hidden_size": args.tiny_hidden_size, "--tiny_layers": args.tiny_layers}
    if args.max_train_examples is not None:
        positive["--max_train_examples"] = args.max_train_examples
    for stage in (1, 2):
        if getattr(args, f"stage{stage}_max_steps") is not None:
            positive[f"--stage{stage}_max_steps"] = getattr(args, f"stage{stage}_max_steps")
    for flag, value in positive.items():
        if not value > 0:
            raise ValueError(f"{flag} {value}: expected a number above 0")
    for flag in ("example_cache_gb", "vision_feature_cache_gb", "vision_feature_cache_disk_gb"):
        if not getattr(args, flag) >= 0:
            raise ValueError(f"--{flag} {getattr(args, flag)}: expected 0 (off) or more")
    if args.dataset_streaming:
        check_streaming(args, training_args)
    missing = sorted(set(training_args.report_to) - set(get_available_reporting_integrations()))
    if missing:
        raise ValueError(f"--report_to {' '.join(missing)}: not installed here (pip install {' '.join(missing)}), or "
                         "--report_to none")


def check_streaming(args: FusarArguments, training_args: SFTConfig) -> None:
    """What a streamed run needs: a step count (a stream has no length) and one reader per process."""
    for stage in planned_stages(args):
        if stage_steps(stage, args, training_args) <= 0:
            raise ValueError(f"--dataset_streaming true: a stream has no length to count epochs in; give --max_steps N "
                             f"(each stage trains N optimizer steps) or --stage{stage}_max_steps N")
    if args.max_train_examples is not None:
        raise ValueError("--max_train_examples: applies to a dataset read whole; a streamed stage runs --max_steps")
    if training_args.dataloader_num_workers:
        raise ValueError(f"--dataloader_num_workers {training_args.dataloader_num_workers}: a streamed dataset is "
                         "read in each training process (its position is counted there); use 0")
    if not args.dataset_shuffle_buffer > 0:
        raise ValueError(f"--dataset_shuffle_buffer {args.dataset_shuffle_buffer}: expected a number of rows above 0")


def main(args: FusarArguments, training_args: SFTConfig, model_args: ModelConfig):
    check_data_parallel(training_args)
    check_flags(training_args, model_args)
    check_arguments(args, training_args)
    if model_args.model_name_or_path != "tiny":
        local_or_hub_id(model_args.model_name_or_path, "--model_name_or_path")
    dataset = load_triplets(args.dataset_name, args.dataset_streaming)  # every input checked before an old run is cleared
    check_validation_split(dataset, training_args)
    if args.dataset_streaming and training_args.eval_strategy != "no":  # read whole (it is small), so that every
        dataset["validation"] = load_triplet_dataset(args.dataset_name, "validation")  # process has even batches
    with training_args.main_process_first(local=False):  # one process checks and clears the folder; the others agree
        prepare_output_dir(args, training_args, model_args)
    set_seed(training_args.seed)  # the model's initial weights too, not only the training
    model, processor = load_model(args, dataset, model_args, training_args.chat_template_path)
    stages = planned_stages(args)
    check_plan(stages, model, dataset, args, model_args)
    output = Path(training_args.output_dir)
    history = []
    stage1_result = output / "stage1-model"
    for stage in stages:
        if stage == 1 and args.stage == "both" and wants_resume(training_args.resume_from_checkpoint) \
                and (stage1_result / "history.json").exists():  # stage 1 finished before the stop
            model = load_weights(stage1_result, args, model_args, quantized=True)
            history += json.loads((stage1_result / "history.json").read_text())
            continue
        source = stage1_result if stage == 2 and args.stage == "both" else model_args.model_name_or_path
        model, log, trainer = run_stage(stage, model, processor, dataset, args, training_args, model_args, source)
        history += [dict(entry, stage=stage) for entry in log]
        if stage == 1 and args.stage == "both":  # where stage 2 resumes from, and the stage-1 model for ablations
            save_result(trainer, model, processor, stage1_result)
            if trainer.args.should_save:
                (stage1_result / "history.json").write_text(json.dumps(history))  # written last: stage 1 is complete
            if parameters_sharded() or is_quantized(model_args):  # stage 2 starts from whole weights, which its own
                trainer = None  # Trainer shards again; stage 1's (quantised) model is freed first
                gc.collect()
                torch.cuda.empty_cache()
                model = load_weights(stage1_result, args, model_args, quantized=True)
    if hasattr(model, "peft_config"):  # LoRA kept as an adapter: name the weights it applies to
        # A folder by its absolute path: PEFT resolves it from wherever the adapter is loaded, not from the adapter.
        # `tiny` is built in memory: no weights to name, and PEFT would look a repo called "tiny" up on the Hub.
        base = stage1_result if args.stage == "both" else Path(model_args.model_name_or_path)
        model.peft_config["default"].base_model_name_or_path = (
            str(base.resolve()) if base.exists() else None if base == Path("tiny") else model_args.model_name_or_path)
    save_result(trainer, model, processor, output)
    if not trainer.args.should_save:  # the rest of the folder is the main process's to write
        return output
    # A streamed dataset is not read whole: its stages' tasks as asked (check_plan found rows of each stage).
    present = set(stage_tasks(1, args) + stage_tasks(2, args)) if args.dataset_streaming else \
        set(dataset["train"].unique("task"))
    trained_tasks = {stage: sorted(present & set(stage_tasks(stage, args))) for stage in stages}
    run = {"fusar": dataclasses.asdict(args), "training": training_args.to_dict(), "model": dataclasses.asdict(model_args),
           "stage_tasks": trained_tasks, "world_size": training_args.world_size, "history": history}
    (output / "fusar_run.json").write_text(json.dumps(run, indent=2, default=str))
    write_loss_curve(history, output / "loss_curve.png")
    write_model_card(output, args, training_args, model_args, history, stage_tasks=trained_tasks)
    if training_args.push_to_hub:  # everything in the folder: weights, code, processor, card, loss curve, run
        from huggingface_hub import HfApi

        repo = HfApi().create_repo(training_args.hub_model_id or output.name, exist_ok=True).repo_id
        HfApi().upload_folder(folder_path=str(output), repo_id=repo, ignore_patterns=["stage1/*", "stage2/*", "stage1-model/*"],
                              commit_message="FUSAR-GPT trained with train_sft.py")
    return output


class FusarParser(TrlParser):
    """TrlParser that also takes a config file's `model:` key (the alias of `model_name_or_path`)."""

    def set_defaults_with_config(self, **config):
        if "model" in config:
            if "model_name_or_path" in config:
                raise ValueError("the config file gives both model and model_name_or_path: keep one")
            config["model_name_or_path"] = config.pop("model")
        return super().set_defaults_with_config(**config)


def parse_arguments(argv=None) -> tuple[FusarArguments, SFTConfig, ModelConfig]:
    """fusar-train's flags and `--config` YAML keys, over defaults that run on this machine."""
    parser = FusarParser((FusarArguments, SFTConfig, FusarModelConfig))
    parser.set_defaults(**machine_defaults(), **RECIPE_DEFAULTS)  # a --config file's keys override these
    check_given(given_flags(sys.argv[1:] if argv is None else list(argv)))
    return parser.parse_args_and_config(args=argv)


@command("fusar-train")
def cli(argv=None) -> None:
    """The `fusar-train` console script (and `accelerate launch train_sft.py`): exit status 0 after a finished run,
    2 with one line for a user's mistake."""
    main(*parse_arguments(argv))


if __name__ == "__main__":
    raise SystemExit(cli())
