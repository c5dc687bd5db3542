"""Train a small byte-level BPE tokenizer offline, with Qwen2-style special tokens and chat template."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Upstream VideoLLaMA3's training format (videollama3/model/processor.py), with transformers'
# native tokens: ChatML without a system prompt, and a video part written as one <|video_pad|>
# followed by a newline. The native processor expands that token into the per-frame text upstream
# writes, "Time 0.0s:<frame tokens>,Time 0.1s:<frame tokens>", so the prompt a model sees is
# upstream's token for token with <|video_pad|> in place of upstream's <image>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|video_pad|>\n"
    "{% elif part['type'] == 'image' %}<|image_pad|>\n"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (offline) and wrap it as a HF fast tokenizer."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Digits, punctuation and the timestamp prefix the processor writes must all be learnable.
    extra = ["Time 0.0s: 1.2 - 3.4 seconds 5.6 7.8 9.0", "system user assistant"]
    tok.train_from_iterator([*texts, *extra], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=16384,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
