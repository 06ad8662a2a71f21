"""`vlmdata train`: tiny models of every family learn from shards, adapters reload exactly, frozen parts stay put."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from tests.tokenize_fixtures import FAMILIES, ROOT, normalised, tiny_model
from vlmdata.cli import cli
from vlmdata.convert import convert
from vlmdata.readers import ReaderOptions
from vlmdata.errors import FatalError
from vlmdata.shards import load_shards, read_layout
from vlmdata.tokenize import tokenize
from vlmdata.train import AdapterOptions, ShardCollator, TrainOptions, train
from vlmdata.recipe.checks import lora_target_modules
from vlmdata.train.model import DEFAULT_LORA_TARGETS, lora_targets, vision_modules

# The tiny models' heads are random at a 0.02 scale behind a frozen final norm, which bounds the logits LoRA on
# the projections alone can reach; adapting the head too lets a few rows be learnt by heart in a few steps.
MEMORISE = DEFAULT_LORA_TARGETS + "|.*lm_head"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return normalised(tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def shards(data_dir, tmp_path_factory):
    made = {}

    def make(alias: str) -> Path:
        if alias not in made:
            made[alias] = tmp_path_factory.mktemp(f"shards-{alias}") / "shards"
            tokenize(data_dir, made[alias], model=str(tiny_model(alias)), progress=False)
        return made[alias]

    return make


def _options(**overrides) -> TrainOptions:
    settings = dict(
        adapter=AdapterOptions(lora_dropout=0.0, lora_target_modules=MEMORISE),
        max_steps=80, learning_rate=5e-2, lr_scheduler="cosine", batch_size=3,
    )
    return TrainOptions(**{**settings, **overrides})


def _first_batch(shards_dir: Path, model) -> dict[str, torch.Tensor]:
    rows = list(load_shards(shards_dir))
    return ShardCollator(read_layout(shards_dir), pad_token_id=0, float_dtype=model.dtype)(rows)


# Every family runs in `make test`; `make test-fast` keeps two.
@pytest.mark.parametrize(
    "alias", [alias if alias in ("gemma3", "qwen2_vl") else pytest.param(alias, marks=pytest.mark.slow) for alias in FAMILIES]
)
def test_lora_learns_saves_and_reloads_with_the_same_logits(alias, shards, tmp_path):
    out = tmp_path / "lora"
    summary = train(str(shards(alias)), out, options=_options(), progress=False)

    assert summary.steps == 80
    records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == list(range(1, 81))
    # The mean of the last ten steps, not one step, with a wide margin: float reductions differ between CPUs
    # (the last step's loss came to 0.51x the first on one CPU and 0.50x on another), while a model that does
    # not learn stays near 1x.
    last_ten = sum(record["loss"] for record in records[-10:]) / 10
    assert last_ten < 0.7 * summary.first_loss, (summary.first_loss, last_ten)
    for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json", "loss.png", "vlmdata.json",
                 "processor_config.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()  # no --save-steps: no checkpoint, and no empty folder for one

    trained = summary.model.eval()
    batch = _first_batch(shards(alias), trained)
    with torch.no_grad():
        before = trained(**batch).logits
        base = AutoModelForImageTextToText.from_pretrained(tiny_model(alias))
        reloaded = PeftModel.from_pretrained(base, out).eval()
        after = reloaded(**batch).logits
    assert torch.equal(before, after)


def test_only_lora_weights_change_and_the_vision_tower_is_bit_identical(shards, tmp_path):
    original = AutoModelForImageTextToText.from_pretrained(tiny_model("llava")).state_dict()
    summary = train(str(shards("llava")), tmp_path / "lora", options=_options(max_steps=5), progress=False)
    model = summary.model.get_base_model()
    changed = []
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert key in original, name
        if not torch.equal(tensor, original[key]):
            changed.append(name)
    assert changed == []
    assert vision_modules(model) == ["model.vision_tower", "model.multi_modal_projector"]
    lora = [name for name, parameter in summary.model.named_parameters() if parameter.requires_grad]
    assert lora and all("lora_" in name and "language_model" in name or "lm_head" in name for name in lora)


def test_default_targets_are_the_language_model_projections(shards, tmp_path):
    summary = train(str(shards("mllama")), tmp_path / "lora", options=TrainOptions(max_steps=1), progress=False)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    targets = config["target_modules"]
    assert any(".cross_attn.q_proj" in name for name in targets)  # Mllama's cross-attention layers count
    assert all("language_model" in name for name in targets) and not any("vision" in name for name in targets)
    assert summary.trainable_parameters < summary.total_parameters / 2


def test_a_regex_that_matches_nothing_lists_modules_that_exist(shards, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(tmp_path / "x"), "--quiet",
                                      "--lora-target-modules", r"model.text.layers.[\d]+.attn.q_proj"])
    assert result.exit_code == 1
    assert "matches no linear layer" in result.output and "model.language_model.layers.0" in result.output


def test_quantization_without_a_gpu_is_one_clear_error(shards, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(tmp_path / "x"), "--load-in-4bit"])
    assert result.exit_code == 1 and "needs a CUDA GPU" in result.output and "Traceback" not in result.output


def test_a_folder_that_is_not_shards_is_refused(data_dir, tmp_path):
    with pytest.raises(FatalError, match="not token shards|no vlmdata.json"):
        train(str(data_dir), tmp_path / "x", progress=False)


def test_full_fine_tuning_keeps_the_vision_side_frozen(shards, tmp_path):
    original = AutoModelForImageTextToText.from_pretrained(tiny_model("gemma3")).state_dict()
    summary = train(str(shards("gemma3")), tmp_path / "full", options=_options(adapter=AdapterOptions("full"), max_steps=3, learning_rate=1e-3), progress=False)
    after = summary.model.state_dict()
    vision = [name for name in after if name.startswith(("model.vision_tower.", "model.multi_modal_projector."))]
    assert vision and all(torch.equal(after[name], original[name]) for name in vision)
    assert not torch.equal(after["model.language_model.layers.0.self_attn.q_proj.weight"],
                           original["model.language_model.layers.0.self_attn.q_proj.weight"])
    assert (tmp_path / "full" / "model.safetensors").is_file()


def test_resume_continues_the_step_count_and_the_loss_curve(shards, tmp_path):
    options = _options(max_steps=6, save_steps=3, batch_size=1)
    straight = train(str(shards("gemma3")), tmp_path / "straight", options=options, progress=False)
    expected = [json.loads(line) for line in (tmp_path / "straight" / "loss.jsonl").read_text().splitlines()]

    out = tmp_path / "resumed"
    train(str(shards("gemma3")), out, options=options, progress=False)
    # As if killed after the checkpoint at step 3: the later checkpoint and log lines are gone.
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    resumed = train(str(shards("gemma3")), out, options=options, resume=True, progress=False)
    records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert resumed.steps == straight.steps == 6
    assert [record["step"] for record in records] == [1, 2, 3, 4, 5, 6]
    assert [record["loss"] for record in records] == pytest.approx([record["loss"] for record in expected], rel=1e-4)


def test_eval_split_reports_an_eval_loss(shards, tmp_path):
    summary = train(str(shards("gemma3")), tmp_path / "eval", options=_options(max_steps=2, val_set_size=1), progress=False)
    assert "eval_loss" in summary.metrics and summary.metrics["eval_loss"] > 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["eval_loss"] == summary.metrics["eval_loss"]


@pytest.mark.slow
def test_two_processes_with_torchrun_train_on_different_rows_and_save_once(tmp_path):
    data = tmp_path / "data"
    source = Path(__file__).parents[1] / "fixtures" / "data" / "llava_instruct_mix"
    convert([str(source)], data, reader_options=ReaderOptions(split="train[:50%]"), progress=False)  # six rows
    tokenize(data, tmp_path / "shards", model=str(tiny_model("gemma3")), progress=False)
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "vlmdata.cli",
               "train", str(tmp_path / "shards"), "-o", str(out), "--batch-size", "1", "--log-rows", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [(out / f"rows-rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3 and not set(ranks[0]) & set(ranks[1])
    assert len(set(ranks[0] + ranks[1])) == 6
    records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1, 2, 3]  # written by rank 0 alone
    assert (out / "adapter_model.safetensors").is_file() and (out / "metrics.json").is_file()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gemma4_adapts_only_its_language_model_by_both_forms_of_targets():
    model = AutoModelForImageTextToText.from_pretrained(tiny_model("gemma4"))
    towers = ["model.vision_tower", "model.audio_tower", "model.embed_vision", "model.embed_audio"]
    assert vision_modules(model) == towers
    default = lora_targets(model, DEFAULT_LORA_TARGETS)
    # axolotl's `lora_target_modules: [q_proj, ...]`: the vision tower's projections wrap their linear layer
    # (`q_proj.linear`), so only the language model's match.
    listed = lora_targets(model, lora_target_modules(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                       "down_proj"]))
    assert default == listed and len(default) == 7 * model.config.text_config.num_hidden_layers
    assert all(name.startswith("model.language_model.layers.") for name in default)


@pytest.mark.parametrize("alias", ["qwen3_vl", "qwen3_5"])
def test_default_targets_put_lora_on_every_qwen3_layer_and_axolotls_list_finds_the_same(alias):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias))
    targets = lora_targets(model, DEFAULT_LORA_TARGETS)
    assert vision_modules(model) == ["model.visual"] and not any(".visual." in name for name in targets)
    layers = model.config.text_config.num_hidden_layers
    assert {name.split(".layers.")[1].split(".")[0] for name in targets} == {str(index) for index in range(layers)}
    mixers = {name.rsplit(".", 1)[-1] for name in targets if ".self_attn." in name or ".linear_attn." in name}
    expected = {"q_proj", "k_proj", "v_proj", "o_proj"}
    if alias == "qwen3_5":  # layer 0 is a gated delta-net, layer 1 full attention
        expected |= {"in_proj_qkv", "in_proj_z", "out_proj"}
    assert mixers == expected
    listed = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "in_proj_qkv", "in_proj_z",
              "out_proj"]
    assert lora_targets(model, lora_target_modules(listed)) == targets


def test_glm4v_adapts_every_language_model_projection_and_axolotls_regex_finds_the_same():
    model = AutoModelForImageTextToText.from_pretrained(tiny_model("glm4v"))
    assert vision_modules(model) == ["model.visual"]
    targets = lora_targets(model, DEFAULT_LORA_TARGETS)
    # GLM-4.1V's MLP fuses gate and up into gate_up_proj; nothing of the vision tower is adapted.
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert {name.rsplit(".", 1)[-1] for name in targets} == projections
    assert len(targets) == len(projections) * model.config.text_config.num_hidden_layers
    assert all(name.startswith("model.language_model.layers.") for name in targets)
    axolotl = r"model.language_model.layers.[\d]+.(mlp|self_attn).(gate_up|down|q|k|v|o)_proj"
    assert lora_targets(model, lora_target_modules(axolotl)) == targets
    # A list of names reaches the vision tower too, whose MLPs and merger have down_proj layers of their own.
    listed = lora_targets(model, lora_target_modules(sorted(projections)))
    assert set(targets) < set(listed) and all(name.startswith("model.visual.") for name in set(listed) - set(targets))


@pytest.mark.parametrize("alias", ["internvl", "llava_onevision"])
def test_internvl_and_llava_onevision_adapt_only_their_language_model(alias):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias))
    assert vision_modules(model) == ["model.vision_tower", "model.multi_modal_projector"]
    default = lora_targets(model, DEFAULT_LORA_TARGETS)
    assert len(default) == 7 * model.config.text_config.num_hidden_layers
    assert all(name.startswith("model.language_model.layers.") for name in default)
    # The recipe's axolotl regex finds the same layers. axolotl's list form would not: the vision tower names its
    # attention projections q_proj, k_proj and v_proj too, and a list matches them anywhere in the model.
    recipe = yaml.safe_load((ROOT / "recipes" / f"{alias}.yaml").read_text())
    assert lora_targets(model, lora_target_modules(recipe["lora_target_modules"])) == default
    listed = lora_targets(model, lora_target_modules(["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert any(name.startswith("model.vision_tower.") for name in listed)


def test_lfm2_vl_adapts_its_attention_convolution_and_mlp_projections_only():
    model = AutoModelForImageTextToText.from_pretrained(tiny_model("lfm2_vl"))
    assert vision_modules(model) == ["model.vision_tower", "model.multi_modal_projector"]
    default = lora_targets(model, DEFAULT_LORA_TARGETS)
    # Layer 0 is a short convolution (in_proj, out_proj around the conv), layer 1 attention; both have an MLP
    # of w1, w2 and w3. The vision tower names its attention projections q_proj ... out_proj too: never matched.
    layer = {name.split(".layers.")[1] for name in default}
    assert layer == {"0.conv.in_proj", "0.conv.out_proj", "1.self_attn.q_proj", "1.self_attn.k_proj",
                     "1.self_attn.v_proj", "1.self_attn.out_proj"} | {
        f"{index}.feed_forward.{name}" for index in (0, 1) for name in ("w1", "w2", "w3")}
    assert all(name.startswith("model.language_model.layers.") for name in default)
    recipe = yaml.safe_load((ROOT / "recipes" / "lfm2_vl.yaml").read_text())
    assert lora_targets(model, lora_target_modules(recipe["lora_target_modules"])) == default
    listed = lora_targets(model, lora_target_modules(["q_proj", "k_proj", "v_proj", "out_proj"]))
    assert any(name.startswith("model.vision_tower.") for name in listed)


def test_smolvlm_adapts_only_its_text_model():
    model = AutoModelForImageTextToText.from_pretrained(tiny_model("smolvlm"))
    assert vision_modules(model) == ["model.vision_model", "model.connector"]
    default = lora_targets(model, DEFAULT_LORA_TARGETS)
    assert len(default) == 7 * model.config.text_config.num_hidden_layers
    assert all(name.startswith("model.text_model.layers.") for name in default)
    # The recipe's axolotl regex finds the same layers; axolotl's list form reaches into the vision model too.
    recipe = yaml.safe_load((ROOT / "recipes" / "smolvlm.yaml").read_text())
    assert lora_targets(model, lora_target_modules(recipe["lora_target_modules"])) == default
    listed = lora_targets(model, lora_target_modules(["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert any(name.startswith("model.vision_model.") for name in listed)
