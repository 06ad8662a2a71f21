"""Loading the model to train and choosing what trains: LoRA on the language model, or full weights.

By default only the language model's attention and MLP projections get LoRA adapters; the vision tower, the
projector and the audio tower stay frozen (`--train-vision` unfreezes the vision side). Module names follow
transformers' own (`model.language_model.layers.3.self_attn.q_proj`; SmolVLM2's `model.text_model.layers...`),
which is what axolotl's `lora_target_modules` regexes are written against.
"""

from __future__ import annotations

import importlib.util

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from vlmdata.errors import FatalError
from vlmdata.optional import require

# Every family's language model names its projections this way; Mllama's cross-attention layers included.
# Qwen3.5's gated delta-net layers mix tokens through in_proj_qkv, in_proj_z and out_proj instead of q/k/v/o_proj;
# naming them too puts LoRA on every language-model layer (its small in_proj_a/in_proj_b gate heads stay frozen).
# GLM-4.1V fuses its MLP's gate and up projections into one gate_up_proj. LFM2-VL's language model mixes tokens in
# its short-convolution layers through in_proj and out_proj, and names its MLP's projections w1, w2 and w3.
# SmolVLM2 calls its language model text_model.
DEFAULT_LORA_TARGETS = r".*(language|text)_model.*\.((q|k|v|o|gate|up|gate_up|down|out)_proj|in_proj(_qkv|_z)?|w[123])"
# The vision side of each family: the tower, the projector into the language model (SmolVLM2's connector),
# Gemma 3n's and Gemma 4's embedders, and with them their audio tower and embedder, frozen and trained
# (--train-vision) alike.
VISION_PARTS = ("vision_tower", "vision_model", "visual", "multi_modal_projector", "connector", "embed_vision",
                "audio_tower", "embed_audio")
ADAPTERS = ("lora", "full")
# What the libraries say on every run, which tells the user nothing about theirs: (category, start of message).
KNOWN_NOTICES = (
    # peft reads transformers' old name for activation checkpointing.
    (FutureWarning, "`is_gradient_checkpointing` is deprecated"),
    # The adapter is saved as safetensors and loads back exactly; merging it is the user's own step.
    (UserWarning, "Model has `tie_word_embeddings=True` and a tied layer is part of the adapter"),
    # A LoRA on lm_head (--lora-target-modules) saves the embedding layers with the adapter, as it should.
    (UserWarning, "Setting `save_embedding_layers` to `True` as embedding layers found in `target_modules`"),
)


@dataclass(frozen=True)
class AdapterOptions:
    """What to train.

    Attributes:
        adapter: "lora" or "full".
        lora_r, lora_alpha, lora_dropout: LoRA's rank, scaling and dropout.
        lora_target_modules: a regex that module names must match in full (LoRA only).
        train_vision: also train the vision tower and projector.
    """

    adapter: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = DEFAULT_LORA_TARGETS
    train_vision: bool = False


def require_dependencies(family: str | None, quantization: str | None = None, attention: str | None = None) -> None:
    """Checks, before any work, that what the run needs is installed: the Trainer's accelerate and peft,
    timm for Gemma 3n's vision tower, bitsandbytes and a CUDA GPU for quantization, flash-attn for its kernels.

    Raises:
        FatalError: one sentence naming what is missing, and the extra that installs it.
    """
    require("accelerate", "train", "vlmdata train")
    require("peft", "train", "vlmdata train")
    if family == "gemma3n":
        require("timm", "gemma3n", "Gemma 3n's vision tower")
    if quantization:
        _require_quantization(quantization)
    if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise FatalError("--attn-implementation flash_attention_2 needs flash-attn, which is not installed: "
                         "pip install flash-attn --no-build-isolation (on a CUDA machine).")


def _require_quantization(quantization: str) -> None:
    if not torch.cuda.is_available():
        raise FatalError(f"--load-in-{quantization} needs a CUDA GPU (bitsandbytes quantization); none is available.")
    require("bitsandbytes", "quantization", f"--load-in-{quantization}")


def load_model(checkpoint: str, *, dtype: torch.dtype, quantization: str | None = None,
               attention: str | None = None) -> nn.Module:
    """The image-text-to-text model of `checkpoint`, in `dtype`, optionally quantized for QLoRA.

    Args:
        checkpoint: a hub id or a local folder.
        dtype: the dtype of the weights (float32 on CPU, bfloat16 on a GPU that supports it).
        quantization: None, "4bit" or "8bit" (bitsandbytes, CUDA only).
        attention: the attention implementation ("sdpa", "eager", "flash_attention_2", ...); None: transformers'
            choice (sdpa where the model supports it). "sdpa_packed" loads with that choice, then gives the
            language model `vlmdata.train.packed_attention` in place of sdpa.
    """
    from transformers import AutoModelForImageTextToText

    from vlmdata.train.packed_attention import SDPA_PACKED, use_packed_attention

    packed = attention == SDPA_PACKED
    kwargs = {"dtype": dtype, **({"attn_implementation": attention} if attention and not packed else {})}
    if quantization:
        kwargs["quantization_config"] = _quantization_config(quantization, dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(checkpoint, **kwargs)
    except OSError as error:
        raise FatalError(
            f"Cannot load the model {checkpoint!r}: {str(error).splitlines()[0]} "
            "(check the path, or log in with `hf auth login` and accept the model's licence for gated models)."
        ) from None
    if packed and not use_packed_attention(model):
        raise FatalError(f"--attn-implementation {SDPA_PACKED} needs a language model that attends with sdpa, "
                         f"and {checkpoint!r} does not: pass --attn-implementation eager.")
    return model


def _quantization_config(quantization: str, dtype: torch.dtype):
    _require_quantization(quantization)
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


@contextmanager
def known_notices_silenced() -> Iterator[None]:
    """Hides the KNOWN_NOTICES of transformers and peft inside the block; every other warning shows."""
    with warnings.catch_warnings():
        for category, start in KNOWN_NOTICES:
            warnings.filterwarnings("ignore", message=re.escape(start), category=category)
        yield


def vision_modules(model: nn.Module) -> list[str]:
    """Names of the outermost vision-side modules (tower, projector) of a model."""
    found: list[str] = []
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_PARTS and not any(name.startswith(outer + ".") for outer in found):
            found.append(name)
    return found


def lora_targets(model: nn.Module, pattern: str) -> list[str]:
    """The linear layers whose full name matches `pattern`.

    Raises:
        FatalError: the pattern is not a regex, or matches no linear layer; the message lists some that exist.
    """
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise FatalError(f"--lora-target-modules {pattern!r} is not a valid regex: {error}.") from None
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    matched = [name for name in linear if regex.fullmatch(name)]
    if not matched:
        examples = ", ".join(_spread(linear, 6))
        raise FatalError(f"--lora-target-modules {pattern!r} matches no linear layer of the model; some that exist: {examples}.")
    return matched


def _spread(names: list[str], count: int) -> list[str]:
    step = max(1, len(names) // count)
    return names[::step][:count]


def prepare(model: nn.Module, options: AdapterOptions) -> nn.Module:
    """Freezes what does not train and adds LoRA adapters; returns the model to hand to the trainer."""
    if options.adapter not in ADAPTERS:
        raise FatalError(f"--adapter must be one of {', '.join(ADAPTERS)}, got {options.adapter!r}.")
    vision = vision_modules(model)
    if options.adapter == "full":
        for name, parameter in model.named_parameters():
            on_vision_side = any(name.startswith(part + ".") for part in vision)
            parameter.requires_grad = options.train_vision or not on_vision_side
        return model

    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, options.lora_target_modules)
    config = LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=targets,
        # Trained in full and saved with the adapter, rather than adapted.
        modules_to_save=vision if options.train_vision else None,
        task_type="CAUSAL_LM",
    )
    with known_notices_silenced():
        return get_peft_model(model, config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
