"""Stage 3, train: token shards -> a LoRA adapter (or full weights), with transformers' Trainer and peft.

No image is decoded: batches come from the shards through `ShardCollator`. One process trains on one GPU (or
the CPU); `accelerate launch` or `torchrun` around the same command trains with DDP on several, the Trainer
giving each rank its own rows. The output folder holds what `PeftModel.from_pretrained(base, OUT)` and
`AutoProcessor.from_pretrained(OUT)` load, the final metrics, the loss log (JSON lines) and its curve (PNG),
the run's log as text (`train.log`) and, with tensorboard, its event files (`OUT/logs`); checkpoints go to
`OUT/checkpoints` for `--resume`.

With `packing`, several rows share each sequence (`vlmdata.pack_plan` decides which, `vlmdata.train.packing`
builds them so that each sample trains as if alone): a batch holds `batch_size` packs.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmdata.errors import FatalError
from vlmdata.folders import METADATA_FILE
from vlmdata.models.loading import resolve_checkpoint
from vlmdata.models.registry import family_for_config
from vlmdata.pack_plan import DEFAULT_WINDOW, PackOptions, PackPlan
from vlmdata.train.callbacks import LossLog, ProgressBar, RowLog, TextLog
from vlmdata.train.collator import PixelDecoding, ShardCollator
from vlmdata.train.data import ArrowRows, Shards, open_shards, split_eval
from vlmdata.train.model import (AdapterOptions, count_parameters, known_notices_silenced, load_model, prepare,
                                 require_dependencies)
from vlmdata.train.packing import PackedRows, check_packable, packing_collator, plan_rows
from vlmdata.train.trainer import CountingTrainer, StepTokens
from vlmdata.train.options import REPORTERS, SCHEDULERS
from vlmdata.train.plot import plot_loss
from vlmdata.versions import library_versions

CHECKPOINTS_DIR = "checkpoints"
LOSS_LOG, LOSS_PLOT, METRICS_FILE = "loss.jsonl", "loss.png", "metrics.json"
TEXT_LOG, TENSORBOARD_DIR = "train.log", "logs"


@dataclass(frozen=True)
class TrainOptions:
    """The training settings; defaults suit LoRA on one GPU."""

    adapter: AdapterOptions = field(default_factory=AdapterOptions)
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    bf16: bool | None = None  # None: when the GPU supports it
    gradient_checkpointing: bool = False
    seed: int = 42
    save_steps: int | None = None  # None: only at the end
    save_total_limit: int | None = 2
    val_set_size: float = 0.0
    eval_steps: int | None = None
    logging_steps: int = 1
    quantization: str | None = None  # "4bit" / "8bit"
    num_workers: int = 0
    log_rows: bool = False
    report_to: str | None = None  # "none", "tensorboard" or "all" (every integration installed); None: tensorboard when installed
    attn_implementation: str | None = None  # None: transformers' choice (sdpa where the model has it)
    packing: bool = False
    pack_length: int | None = None  # None: the shards' --max-length, else 4096
    pack_media_budget: int | None = None  # the most media tokens a pack holds; None: no limit
    pack_window: int = DEFAULT_WINDOW


@dataclass
class TrainSummary:
    """What a training run did."""

    out_dir: str
    checkpoint: str
    steps: int
    trainable_parameters: int
    total_parameters: int
    first_loss: float | None
    last_loss: float | None
    metrics: dict[str, Any]
    model: Any = field(default=None, repr=False)  # the trained model, for callers in Python


def train(
    shards_source: str,
    out_dir: str | Path,
    *,
    model: str | None = None,
    options: TrainOptions = TrainOptions(),
    resume: bool | str = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainSummary:
    """Fine-tunes a model on token shards.

    Args:
        shards_source: a folder made by `vlmdata tokenize`, or a hub dataset id holding one.
        out_dir: where the adapter (or weights), processor, metrics and loss log go.
        model: the base model (alias, hub id or folder); by default the one the shards were tokenized for.
        options: the training settings.
        resume: True to continue from the latest checkpoint in `out_dir`, or a checkpoint folder.
        overwrite: replace an existing `out_dir`.
        progress: show the progress bar.

    Example:
        >>> summary = train("out/shards", "out/lora", options=TrainOptions(max_steps=100))  # doctest: +SKIP
        >>> summary.last_loss < summary.first_loss  # doctest: +SKIP
        True
    """
    from transformers import AutoProcessor, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    out = Path(out_dir)
    # Everything that can refuse the run does so before `--overwrite` removes the previous output.
    shards = open_shards(shards_source)
    checkpoint = _checkpoint(model, shards)
    family = shards.metadata["model"].get("family")
    require_dependencies(family, options.quantization, options.attn_implementation)
    pack_options = _pack_options(options, shards, checkpoint, family) if options.packing else None
    bf16 = _bf16(options.bf16)
    args = _training_arguments(out, options, bf16, _reporters(options.report_to))
    resume_from = _prepare_output(out, resume, overwrite)

    set_seed(options.seed)  # LoRA's initial weights are drawn when the adapter is added, before the Trainer seeds
    base = load_model(checkpoint, dtype=torch.bfloat16 if bf16 else torch.float32, quantization=options.quantization,
                      attention=options.attn_implementation)
    trainable = prepare(base, options.adapter)
    if options.gradient_checkpointing:
        trainable.enable_input_require_grads()
    processor = AutoProcessor.from_pretrained(shards.processor_dir)
    seen_ids: list[str] | None = [] if options.log_rows else None
    # Pixel codes travel to the model's device as uint8, a quarter of the floats' bytes, and become the
    # processor's floats there: on a GPU that takes microseconds, where the data loader would spend most of
    # its time writing floats.
    trainable.register_forward_pre_hook(PixelDecoding(shards.layout, base.dtype), with_kwargs=True)
    train_rows, eval_rows = split_eval(shards.dataset, options.val_set_size, options.seed)
    train_dataset, eval_dataset = ArrowRows(train_rows), ArrowRows(eval_rows) if eval_rows is not None else None
    if pack_options is None:
        plan = None
        collator = ShardCollator(shards.layout, _pad_token_id(processor), float_dtype=base.dtype, seen_ids=seen_ids,
                                 decode_pixels=False)
    else:
        # One plan for the run: the Trainer fixes the steps of every epoch from the first, and each epoch visits
        # the packs in a new order (samples are alone in their packs, so which rows share one changes nothing).
        plan = plan_rows(train_rows, pack_options, options.seed, processor, family)
        train_dataset = PackedRows(train_dataset, plan.packs)
        if eval_rows is not None:
            eval_dataset = PackedRows(eval_dataset, plan_rows(eval_rows, pack_options, options.seed, processor, family).packs)
        collator = packing_collator(shards.layout, _pad_token_id(processor), base, family, seen_ids)

    step_tokens = StepTokens()
    loss_log = LossLog(out / LOSS_LOG, resume_step=_checkpoint_step(resume_from), step_tokens=step_tokens)
    callbacks = [loss_log, TextLog(out / TEXT_LOG), ProgressBar(progress)]
    callbacks += [RowLog(out, seen_ids)] if seen_ids is not None else []
    # TensorBoardCallback reads its folder from the environment when the Trainer builds it; TrainingArguments
    # has no logging_dir in transformers 5.
    with _environment("TENSORBOARD_LOGGING_DIR", str(out / TENSORBOARD_DIR)):
        trainer = CountingTrainer(
            model=trainable,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collator,
            callbacks=callbacks,
            step_tokens=step_tokens,
            pad_token_id=_pad_token_id(processor),
        )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    with known_notices_silenced():  # checkpoints are saved while training
        result = trainer.train(resume_from_checkpoint=resume_from)

    metrics = dict(result.metrics)
    if plan is not None:
        metrics.update(_packing_metrics(plan, pack_options, options.batch_size))
        metrics["packing_attention"] = base.config.get_text_config()._attn_implementation
    if eval_rows is not None:
        metrics.update(trainer.evaluate())
    with known_notices_silenced():
        trainer.save_model(str(out))
    records = loss_log.records() if trainer.is_world_process_zero() else []
    losses = [record["loss"] for record in records if "loss" in record]
    trainable_count, total_count = count_parameters(trainable)
    summary = TrainSummary(str(out), checkpoint, trainer.state.global_step, trainable_count, total_count,
                           losses[0] if losses else None, losses[-1] if losses else None, metrics, trainable)
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
        metrics["tokens_seen"] = trainer.state.num_input_tokens_seen
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        plot_loss(records, out / LOSS_PLOT)
        (out / METADATA_FILE).write_text(_metadata(shards_source, shards, checkpoint, options, summary))
        checkpoints = out / CHECKPOINTS_DIR
        if checkpoints.is_dir() and not any(checkpoints.iterdir()):  # made by the Trainer even when nothing is saved
            checkpoints.rmdir()
    return summary


def _pack_options(options: TrainOptions, shards: Shards, checkpoint: str, family: str | None) -> PackOptions:
    """The packing settings, refused with one sentence where the family cannot be packed exactly."""
    from transformers import AutoConfig

    max_length = shards.metadata.get("arguments", {}).get("max_length")
    pack_length = options.pack_length or max_length or PackOptions().pack_length
    check_packable(family, pack_length, AutoConfig.from_pretrained(checkpoint))
    return PackOptions(pack_length, options.pack_media_budget, options.pack_window)


def _packing_metrics(plan: PackPlan, pack_options: PackOptions, batch_size: int) -> dict[str, Any]:
    return {f"packing_{key}": value for key, value in
            {"length": pack_options.pack_length, **plan.summary(batch_size)}.items()}


def _prepare_output(out: Path, resume: bool | str, overwrite: bool) -> str | None:
    """Checks the output folder; returns the checkpoint to resume from, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    if isinstance(resume, str):
        if not Path(resume).is_dir():
            raise FatalError(f"--resume-from {resume!r} is not a checkpoint folder.")
        return resume
    checkpoints = out / CHECKPOINTS_DIR
    if resume:
        last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        if last is None:
            raise FatalError(f"--resume: {checkpoints} holds no checkpoint to continue from.")
        return last
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FatalError(f"{out} already exists and is not empty; pass --resume to continue or --overwrite to replace it.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _checkpoint_step(checkpoint: str | None) -> int | None:
    if checkpoint is None:
        return None
    state = Path(checkpoint) / "trainer_state.json"
    return json.loads(state.read_text())["global_step"] if state.is_file() else 0


def _checkpoint(model: str | None, shards: Shards) -> str:
    """The base model: the shards' own, unless `model` names another checkpoint of the same family."""
    if model is None:
        try:
            return resolve_checkpoint(shards.checkpoint)
        except FatalError as error:  # tokenized from a folder that has moved, or on another machine
            raise FatalError(f"{error} The shards were tokenized for it; pass --model to say where it is now.") from None
    checkpoint = resolve_checkpoint(model)
    tokenized_for, chosen = shards.metadata["model"].get("family"), _family_of(checkpoint)
    if tokenized_for and chosen and chosen != tokenized_for:
        raise FatalError(f"The shards were tokenized for {tokenized_for} but --model {model!r} is {chosen}; tokenize again for it.")
    return checkpoint


def _family_of(checkpoint: str) -> str | None:
    from transformers import AutoConfig

    try:
        family = family_for_config(AutoConfig.from_pretrained(checkpoint).to_dict())
    except Exception:  # an unreachable hub id fails later, when loading, with its own message
        return None
    return family.alias if family else None


def _bf16(requested: bool | None) -> bool:
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if requested and not supported:
        raise FatalError("--bf16 needs a GPU with bfloat16 support; none is available (training runs in float32 on the CPU).")
    return supported if requested is None else requested


def _pad_token_id(processor) -> int:
    tokenizer = getattr(processor, "tokenizer", processor)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise FatalError("The processor's tokenizer has neither a pad nor an end-of-sequence token to pad batches with.")
    return pad


def _training_arguments(out: Path, options: TrainOptions, bf16: bool, reporters: str | list[str]):
    from transformers import TrainingArguments

    if options.lr_scheduler not in SCHEDULERS:
        raise FatalError(f"--lr-scheduler must be one of {', '.join(SCHEDULERS)}, got {options.lr_scheduler!r}.")
    cuda = torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # started by torchrun or accelerate launch
    evaluating = bool(options.val_set_size)
    return TrainingArguments(
        output_dir=str(out / CHECKPOINTS_DIR),
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=options.warmup_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        bf16=bf16,
        activation_checkpointing=options.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if options.gradient_checkpointing else None,
        seed=options.seed,
        data_seed=options.seed,
        save_strategy="steps" if options.save_steps else "no",
        save_steps=options.save_steps or 500,
        save_total_limit=options.save_total_limit,
        eval_strategy="steps" if evaluating and options.eval_steps else "no",
        eval_steps=options.eval_steps,
        logging_steps=options.logging_steps,
        report_to=reporters,
        remove_unused_columns=False,  # the collator needs every stored column
        include_num_input_tokens_seen="no",  # CountingTrainer counts them, packed batches too
        dataloader_num_workers=0 if options.log_rows else options.num_workers,
        use_cpu=not cuda,
        ddp_backend="gloo" if distributed and not cuda else None,
        disable_tqdm=True,
    )


def _reporters(report_to: str | None) -> str | list[str]:
    """What TrainingArguments' `report_to` gets: a list of integrations, or "all"."""
    from transformers.integrations import is_tensorboard_available

    if report_to is None:
        return ["tensorboard"] if is_tensorboard_available() else []
    if report_to not in REPORTERS:
        raise FatalError(f"--report-to must be one of {', '.join(REPORTERS)}, got {report_to!r}.")
    if report_to == "tensorboard" and not is_tensorboard_available():
        raise FatalError("--report-to tensorboard needs tensorboard, which is not installed: "
                         "pip install 'vlmdata[tensorboard]' (or pass --report-to none).")
    return [] if report_to == "none" else ["tensorboard"] if report_to == "tensorboard" else "all"


@contextmanager
def _environment(name: str, value: str):
    """Sets an environment variable for the block only, so that one run's setting never reaches the next."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _metadata(source: str, shards: Shards, checkpoint: str, options: TrainOptions, summary: TrainSummary) -> str:
    metadata = {
        "stage": "train",
        "shards": source,
        "shards_model": shards.metadata.get("model"),
        "base_model": checkpoint,
        "options": asdict(options),
        "steps": summary.steps,
        "trainable_parameters": summary.trainable_parameters,
        "total_parameters": summary.total_parameters,
        "versions": library_versions("transformers", "peft", "accelerate", "torch", "datasets"),
    }
    return json.dumps(metadata, indent=2, default=str)
