"""Our chat templates against the ones the checkpoints ship.

Each packaged template must render exactly what the family's official template renders (stored under
fixtures/chat_templates/official/), and must mark as generated exactly the assistant replies with their
end-of-turn token, so that `return_assistant_tokens_mask=True` gives the labels we train on.
"""

from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

from vlmdata.models import FAMILIES, load_template, template_names

OFFICIAL = Path(__file__).parent.parent / "fixtures" / "chat_templates" / "official"
BOS, EOS = "<s>", "</s>"
# Fixed so that Llama 3.2 Vision's system block does not depend on the day the tests run.
TEMPLATE_KWARGS = {"bos_token": BOS, "eos_token": EOS, "date_string": "26 Jul 2024"}

# What each family trains on for an assistant reply whose only text part is `text`.
ASSISTANT_SPAN = {
    "gemma3": lambda text: text.strip() + "<end_of_turn>",
    "gemma3n": lambda text: text.strip() + "<end_of_turn>",
    "gemma4": lambda text: text.strip() + "<turn|>",
    "qwen2_vl": lambda text: text + "<|im_end|>",
    "qwen3_vl": lambda text: text + "<|im_end|>",
    "qwen3_5": lambda text: text.strip() + "<|im_end|>",
    "llava": lambda text: text + " ",  # LLaVA 1.5 ends a reply with a space, not a token
    "llama3_2_vision": lambda text: text + "<|eot_id|>",
    "llama4": lambda text: text + "<|eot|>",
    "pixtral": lambda text: text + EOS,
    "mistral_v7_tekken": lambda text: text + EOS,
    "glm4v": lambda text: text,  # GLM-4.1V writes no end-of-turn token: the next role token follows the reply
    "internvl": lambda text: text + "<|im_end|>",
    "llava_onevision": lambda text: text + "<|im_end|>",
    "lfm2_vl": lambda text: text + "<|im_end|>",
    "smolvlm": lambda text: text + "<end_of_utterance>",
}


def text(value):
    return {"type": "text", "text": value}


# Media parts as the normalised dataset stores them: no payload, a null text.
IMAGE = {"type": "image", "text": None}
AUDIO = {"type": "audio", "text": None}
VIDEO = {"type": "video", "text": None}


def user(*parts):
    return {"role": "user", "content": list(parts)}


def assistant(reply):
    return {"role": "assistant", "content": [text(reply)]}


def system(prompt):
    return {"role": "system", "content": [text(prompt)]}


CONVERSATIONS = {
    "text_only": [user(text("Hello there")), assistant("Hi! How can I help?")],
    "one_image": [user(IMAGE, text("What is this?")), assistant("A cat.")],
    "images_in_one_turn": [user(IMAGE, IMAGE, text("Compare them.")), assistant("The left one is bigger.")],
    "images_in_several_turns": [
        user(IMAGE, text("What is this?")),
        assistant("A cat."),
        user(text("And this one?"), IMAGE),
        assistant("A dog."),
    ],
    "system_prompt": [system("You answer in one word."), user(text("Hello")), assistant("Hi.")],
    "system_prompt_with_image": [system("You answer in one word."), user(IMAGE, text("What?")), assistant("Cat.")],
    "several_turns": [
        user(text("One")),
        assistant("Two"),
        user(text("Three")),
        assistant("Four"),
        user(text("Five")),
    ],
    "string_content": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ],
    "untrimmed_text": [user(text("  padded  "), IMAGE), assistant(" a reply with spaces \n")],
    "open_question": [user(IMAGE, text("Describe the picture."))],
}
AUDIO_CONVERSATIONS = {
    "audio": [user(AUDIO, text("Transcribe this.")), assistant("hello world")],
    "audio_and_image": [user(IMAGE, AUDIO, text("Do they match?")), assistant("Yes.")],
}

VIDEO_CONVERSATIONS = {
    "video": [user(VIDEO, text("What happens?")), assistant("It spins.")],
    "video_and_images": [
        system("Be brief."),
        user(IMAGE, text("This first.")),
        assistant("A cat."),
        user(VIDEO, IMAGE, text("Now these.")),
        assistant("It runs; a dog."),
    ],
}
# Every kind Gemma 4 takes, in one conversation.
MIXED_MEDIA_CONVERSATIONS = {
    "video_image_and_audio": [
        system("Be brief."),
        user(text("Watch"), VIDEO, IMAGE),
        assistant("Seen."),
        user(AUDIO, text("And listen.")),
        assistant("Heard."),
    ],
}
# Replies that carry their reasoning before `</think>`, as reasoning datasets store them.
THINKING_CONVERSATIONS = {
    "thinking_last_reply": [user(text("2+2?")), assistant("<think>\nAdd them.\n</think>\n\nFour.")],
    "thinking_earlier_reply": [
        user(text("2+2?")),
        assistant("<think>Add them.</think>Four."),
        user(text("And 3+3?")),
        assistant("Six."),
    ],
}
TOOL_CONVERSATIONS = {
    "tool_results": [
        user(text("Weather?")),
        assistant("Let me check."),
        {"role": "tool", "content": [text("Sunny")]},
        {"role": "tool", "content": "Warm"},
        assistant("Sunny and warm."),
    ],
}
VIDEO_TEMPLATES = ("qwen2_vl", "qwen3_vl", "qwen3_5", "gemma4", "glm4v", "internvl", "llava_onevision", "smolvlm")
# Qwen3.5 opens each reply after the last user turn with a think block, empty when the reply has no reasoning.
THINK_BLOCK = {"qwen3_5": "<think>\n\n</think>\n\n"}


def conversations_for(name):
    conversations = dict(CONVERSATIONS)
    if name in ("gemma3n", "gemma4"):
        conversations.update(AUDIO_CONVERSATIONS)
    if name in VIDEO_TEMPLATES:
        conversations.update(VIDEO_CONVERSATIONS)
    if name == "gemma4":
        conversations.update(MIXED_MEDIA_CONVERSATIONS)
    if name in ("qwen3_vl", "qwen3_5"):
        conversations.update(THINKING_CONVERSATIONS)
    if name in ("qwen3_vl", "qwen3_5", "internvl"):
        conversations.update(TOOL_CONVERSATIONS)
    if name == "glm4v":
        conversations.update(THINKING_CONVERSATIONS)
    return conversations


def official_input(name, conversation):
    """Rewrite a conversation into the form the official template understands.

    Our templates take plain-string content and system prompts given as parts everywhere; some official
    ones do not (LLaVA's renders string content as nothing, Llama 3.2 Vision's and GLM-4.1V's print a part
    list as Python text). Those cases are compared with the equivalent input the official template does handle.
    """
    rewritten = []
    for message in conversation:
        content = message["content"]
        if name in ("llava", "llava_onevision", "smolvlm") and isinstance(content, str):
            content = [text(content)]
        if name == "llama3_2_vision" and message["role"] == "system" and not isinstance(content, str):
            content = "".join(part["text"] for part in content if part["type"] == "text")
        if name == "glm4v" and message["role"] != "user" and not isinstance(content, str):
            content = "".join(part["text"] for part in content if part["type"] == "text")
        rewritten.append({**message, "content": content})
    return rewritten


def render(template, conversation, **kwargs):
    """Render with transformers' own renderer; a template error is returned as its message."""
    try:
        rendered, _ = render_jinja_template([conversation], chat_template=template, **TEMPLATE_KWARGS, **kwargs)
    except TemplateError as error:
        return f"TemplateError: {error}"
    return rendered[0]


def generated_spans(template, conversation):
    """Return the generation-marked substrings, with touching spans joined into one."""
    rendered, indices = render_jinja_template(
        [conversation], chat_template=template, return_assistant_tokens_mask=True, **TEMPLATE_KWARGS
    )
    merged = []
    for start, end in indices[0]:
        if merged and merged[-1][1] == start:
            merged[-1][1] = end
        elif start != end:
            merged.append([start, end])
    return rendered[0], [rendered[0][start:end] for start, end in merged]


def expected_spans(name, conversation):
    last_user_turn = max(index for index, message in enumerate(conversation) if message["role"] == "user")
    spans = []
    for index, message in enumerate(conversation):
        if message["role"] == "assistant":
            reply = message["content"] if isinstance(message["content"], str) else message["content"][0]["text"]
            think_block = THINK_BLOCK.get(name, "") if index > last_user_turn else ""
            spans.append(think_block + ASSISTANT_SPAN[name](reply))
    return spans


CASES = [(name, key) for name in sorted(ASSISTANT_SPAN) for key in conversations_for(name)]
# The thinking rows have their own expectations (test_qwen3_5_think_blocks).
SPAN_CASES = [(name, key) for name, key in CASES if not (name == "qwen3_5" and key in THINKING_CONVERSATIONS)]


def test_every_packaged_template_has_an_official_reference():
    assert template_names() == sorted(path.stem for path in OFFICIAL.glob("*.jinja")) == sorted(ASSISTANT_SPAN)
    assert {family.template_name for family in FAMILIES.values()} == set(template_names())


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize(("name", "key"), CASES)
def test_renders_like_the_official_template(name, key, add_generation_prompt):
    conversation = conversations_for(name)[key]
    official = (OFFICIAL / f"{name}.jinja").read_text(encoding="utf-8")
    ours = load_template(name)
    expected = render(official, official_input(name, conversation), add_generation_prompt=add_generation_prompt)
    assert render(ours, conversation, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.parametrize(("name", "key"), SPAN_CASES)
def test_generation_marks_exactly_the_replies(name, key):
    conversation = conversations_for(name)[key]
    ours = load_template(name)
    if render(ours, conversation).startswith("TemplateError"):
        pytest.skip("the family refuses this conversation")
    rendered, spans = generated_spans(ours, conversation)
    assert rendered == render(ours, conversation)  # marking never changes the text
    assert spans == expected_spans(name, conversation)


@pytest.mark.parametrize("name", ["gemma3", "gemma3n", "pixtral"])
def test_refuses_turns_that_do_not_alternate(name):
    conversation = [assistant("I speak first."), user(text("Hi"))]
    official = (OFFICIAL / f"{name}.jinja").read_text(encoding="utf-8")
    assert render(load_template(name), conversation).startswith("TemplateError")
    assert render(official, conversation).startswith("TemplateError")


def test_llama3_2_vision_refuses_a_system_prompt_with_images():
    conversation = CONVERSATIONS["system_prompt_with_image"]
    assert render(load_template("llama3_2_vision"), conversation) == (
        "TemplateError: Prompting with images is incompatible with system messages."
    )


def test_qwen2_vl_numbers_images_across_the_conversation():
    conversation = CONVERSATIONS["images_in_several_turns"]
    official = (OFFICIAL / "qwen2_vl.jinja").read_text(encoding="utf-8")
    ours = render(load_template("qwen2_vl"), conversation, add_vision_id=True)
    assert ours == render(official, conversation, add_vision_id=True)
    assert "Picture 2: " in ours


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_qwen3_numbers_images_and_videos_across_the_conversation(name):
    conversation = VIDEO_CONVERSATIONS["video_and_images"]
    official = (OFFICIAL / f"{name}.jinja").read_text(encoding="utf-8")
    ours = render(load_template(name), conversation, add_vision_id=True)
    assert ours == render(official, conversation, add_vision_id=True)
    assert "Picture 2: " in ours and "Video 1: " in ours


def test_qwen3_5_think_blocks():
    # The last reply keeps its reasoning in a think block; an earlier reply loses it, and the reply after the
    # last user turn gets an empty block.
    _, last = generated_spans(load_template("qwen3_5"), THINKING_CONVERSATIONS["thinking_last_reply"])
    assert last == ["<think>\nAdd them.\n</think>\n\nFour.<|im_end|>"]
    _, earlier = generated_spans(load_template("qwen3_5"), THINKING_CONVERSATIONS["thinking_earlier_reply"])
    assert earlier == ["Four.<|im_end|>", "<think>\n\n</think>\n\nSix.<|im_end|>"]


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_qwen3_5_generation_prompt_opens_a_think_block(enable_thinking):
    conversation = CONVERSATIONS["open_question"]
    official = (OFFICIAL / "qwen3_5.jinja").read_text(encoding="utf-8")
    ours = render(load_template("qwen3_5"), conversation, add_generation_prompt=True, enable_thinking=enable_thinking)
    assert ours == render(official, conversation, add_generation_prompt=True, enable_thinking=enable_thinking)


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_qwen3_templates_agree_on_unusual_conversations(name):
    # Qwen3.5 refuses a conversation without a user turn and a late system message; Qwen3-VL drops the latter.
    official = (OFFICIAL / f"{name}.jinja").read_text(encoding="utf-8")
    for conversation in ([system("S"), assistant("Hi")], [user(text("Hi")), system("Late"), assistant("Ok")]):
        assert render(load_template(name), conversation) == render(official, conversation)


def test_replies_made_of_several_text_parts_are_kept_whole():
    # Mistral's own template keeps only the first part of a reply; ours trains on all of it.
    conversation = [user(text("Hi")), {"role": "assistant", "content": [text("Hello"), text(" there")]}]
    _, spans = generated_spans(load_template("mistral_v7_tekken"), conversation)
    assert spans == ["Hello there" + EOS]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("key", ["text_only", "system_prompt", "several_turns"])
def test_gemma4_thinking_opens_a_system_turn_like_the_official_template(key, add_generation_prompt):
    conversation = CONVERSATIONS[key]
    official = (OFFICIAL / "gemma4.jinja").read_text(encoding="utf-8")
    kwargs = {"enable_thinking": True, "add_generation_prompt": add_generation_prompt}
    ours = render(load_template("gemma4"), conversation, **kwargs)
    assert ours == render(official, conversation, **kwargs)
    assert "<|turn>system\n<|think|>\n" in ours


def test_gemma4_replies_lose_their_thinking_like_the_official_template():
    conversation = [
        user(text("Hi")),
        assistant("<|channel>thought\nThey greet me.<channel|>Hello!"),
        {"role": "assistant", "content": "More <|channel>thought\nunfinished"},
        user(text("Bye")),
    ]
    official = (OFFICIAL / "gemma4.jinja").read_text(encoding="utf-8")
    assert render(load_template("gemma4"), conversation) == render(official, conversation)
    _, spans = generated_spans(load_template("gemma4"), conversation)
    assert spans == ["Hello!<turn|>", "More<turn|>"]


def test_smolvlm_writes_a_colon_alone_before_an_image_that_opens_a_message():
    ours = render(load_template("smolvlm"), CONVERSATIONS["images_in_several_turns"], add_generation_prompt=True)
    assert ours == (
        "<|im_start|>User:<image>What is this?<end_of_utterance>\nAssistant: A cat.<end_of_utterance>\n"
        "User: And this one?<image><end_of_utterance>\nAssistant: A dog.<end_of_utterance>\nAssistant:"
    )


def test_glm4v_keeps_the_reasoning_of_every_reply_like_the_official_template():
    # GLM-4.1V-Thinking replies "<think>...</think><answer>...</answer>"; its template writes past replies whole.
    reply = "<think>Add them.</think><answer>Four.</answer>"
    conversation = [user(text("2+2?")), assistant(reply), user(text("And 3+3?")), assistant("<answer>Six.</answer>")]
    official = (OFFICIAL / "glm4v.jinja").read_text(encoding="utf-8")
    assert render(load_template("glm4v"), conversation) == render(official, official_input("glm4v", conversation))
    _, spans = generated_spans(load_template("glm4v"), conversation)
    assert spans == [reply, "<answer>Six.</answer>"]


def test_glm4v_refuses_tool_turns_the_official_template_drops():
    conversation = TOOL_CONVERSATIONS["tool_results"]
    official = (OFFICIAL / "glm4v.jinja").read_text(encoding="utf-8")
    assert "Warm" not in render(official, official_input("glm4v", conversation))
    assert render(load_template("glm4v"), conversation) == "TemplateError: GLM-4.1V's chat template has no tool turns."


# Every control token the templates write, so that the test tokenizer never splits one.
CONTROL_TOKENS = [
    BOS, EOS, "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<image_soft_token>", "<audio_soft_token>",
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<image>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>", "<|header_start|>", "<|header_end|>",
    "<|eot|>", "<|video_pad|>", "[INST]", "[/INST]", "[IMG]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<|turn>",
    "<turn|>", "<|audio|>", "<|video|>", "<|channel>", "<channel|>", "<|think|>", "[gMASK]", "<sop>", "<|system|>",
    "<|user|>", "<|assistant|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    "<IMG_CONTEXT>", "<video>", "<end_of_utterance>",
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer that can encode any text, with the templates' control tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=CONTROL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["What is this? A cat. Hello there, how can I help?"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS)


@pytest.mark.parametrize("name", sorted(ASSISTANT_SPAN))
def test_assistant_tokens_mask_covers_the_replies(tokenizer, name):
    conversation = CONVERSATIONS["images_in_several_turns"]
    encoded = tokenizer.apply_chat_template(
        conversation,
        chat_template=load_template(name),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        date_string=TEMPLATE_KWARGS["date_string"],
    )
    masked = [token for token, keep in zip(encoded["input_ids"], encoded["assistant_masks"]) if keep]
    decoded, expected = tokenizer.decode(masked), "".join(expected_spans(name, conversation))
    if name in ("llava", "smolvlm"):
        # A LLaVA reply follows "ASSISTANT: " (SmolVLM's "Assistant: "), and the reply's first token carries that
        # space with it.
        decoded, expected = decoded.split(), expected.split()
    assert decoded == expected
