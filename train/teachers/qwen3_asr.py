"""A Qwen3-ASR teacher (transformers' `qwen3_asr`): scores a student's rollout through its own front end,
its own prompt and its own vocabulary.

    teacher = Qwen3ASRTeacher.from_pretrained("Qwen3-ASR-1.7B-hf", student_processor, dtype="bfloat16", device="cuda")
    scores = teacher.score(batch, rollout, extra_ids_B_T_E=rollout.student_topk_ids_B_T_K, k=32)

The teacher's input for one rollout row is the prompt that `Qwen3ASRProcessor.apply_transcription_request`
builds with the checkpoint's chat template (empty system turn, forced language as the assistant prefill):

    <|im_start|>system\\n<|im_end|>\\n<|im_start|>user\\n<|audio_start|>{<|audio_pad|> x n}<|audio_end|><|im_end|>\\n
    <|im_start|>assistant\\nlanguage German<asr_text>

(no newline between the two lines), then the student's sampled tokens mapped into the teacher's
vocabulary (train.teachers.token_map). n comes from the processor, which expands the placeholder.

Languages: an ISO code from `batch["languages"]` is forced with the full name from the processor's own
list (`LANGUAGE_CODE_TO_NAME`, the 30 names the model was trained with). A code outside that list (hr,
sk, sl, et, lt among our dev languages) or no language: nothing is forced and, as in Qwen3-ASR's own
inference, the teacher writes its language header itself (greedy, up to `<asr_text>`), then scores the
student's transcript after it. Scoring the transcript straight after `assistant\\n` would instead teach
the student to begin with "language".

Speed and memory: the clips of a `score` call are encoded `encode_batch_size` at a time, the clips that
need a header decode it together with the KV cache, and `rows_per_forward` rollout rows are scored per
forward. None of these groupings changes a clip's scores (beyond float rounding): see encode_utterances.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

from train.models.generation import left_padded_positions
from train.models.weights import raise_on_loading_info, read_config_json
from train.opd.rollout import Rollout
from train.teachers.base import TokenScores
from train.teachers.scoring import TeacherModel, embed_with_audio, score_rollout
from train.teachers.token_map import DEFAULT_MAX_UNMAPPED_SHARE, TokenMap

PROMPT = ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n"
          "<|im_start|>assistant\n")
FORCED_LANGUAGE = "language {name}<asr_text>"
ASR_TEXT = "<asr_text>"


@dataclass
class UtteranceInputs:
    """One utterance as the teacher sees it: prompt ids (placeholders expanded, language header included)
    and its projected audio embeddings, computed once however many rollout rows share it."""

    prompt_ids_S: torch.Tensor
    audio_embeds_N_D: torch.Tensor
    language: str | None  # the forced name; None where the teacher wrote its own header


def language_name(code: str | None) -> str | None:
    """The Qwen3-ASR name for an ISO code, or None where the model was not trained to be forced to it."""
    return LANGUAGE_CODE_TO_NAME.get(code.lower()) if code else None


class Qwen3ASRTeacher:
    """Frozen Qwen3-ASR scoring student rollouts (the `Teacher` protocol of train.teachers.base).

    `student_vocab_size` is the student model's vocabulary (default: its tokenizer's length; ids past
    it have no token and map to nothing). `max_unmapped` is the TokenMap's limit on the share of the
    student's decodable ids the teacher cannot score.
    `rows_per_forward` bounds memory: full-vocabulary logits of B rows x T tokens x 152k ids are
    large, so rows can be scored in chunks (audio is still encoded once per utterance).
    `encode_batch_size` bounds the utterances per audio-encoder call and per header decode (None: all).
    `max_header_tokens` bounds the teacher's own language header where no language is forced
    (`<asr_text>` is appended if it has not come by then).
    `dropped_positions` counts, for the last call, rollout positions whose sampled token has no
    teacher equivalent (removed from the returned mask); `dropped_positions_total` over all calls.
    """

    def __init__(self, model: Qwen3ASRForConditionalGeneration, processor: Qwen3ASRProcessor, student_processor,
                 student_vocab_size: int | None = None, max_unmapped: float = DEFAULT_MAX_UNMAPPED_SHARE,
                 rows_per_forward: int | None = None, max_header_tokens: int = 12, encode_batch_size: int | None = 16,
                 name: str = "qwen3_asr"):
        for key, value in (("rows_per_forward", rows_per_forward), ("encode_batch_size", encode_batch_size),
                           ("max_header_tokens", max_header_tokens)):
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        self.model = model.eval().requires_grad_(False)
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.name, self.rows_per_forward, self.max_header_tokens = name, rows_per_forward, max_header_tokens
        self.encode_batch_size = encode_batch_size
        self.token_map = TokenMap.for_student(student_processor, self.tokenizer,
                                              student_vocab_size or len(student_processor.tokenizer),
                                              model.config.text_config.vocab_size, max_unmapped_share=max_unmapped,
                                              teacher_name=name)
        self.audio_token_id = model.config.audio_token_id
        if processor.audio_token_id != self.audio_token_id:
            raise ValueError(f"processor's audio placeholder {processor.audio_token!r} has id "
                             f"{processor.audio_token_id}, the model expects {self.audio_token_id}: tokenizer and "
                             "checkpoint do not match")
        self.asr_text_id = self.tokenizer.convert_tokens_to_ids(ASR_TEXT)
        if self.asr_text_id is None or self.asr_text_id == self.tokenizer.unk_token_id:
            raise ValueError(f"teacher tokenizer has no {ASR_TEXT} token: not a Qwen3-ASR tokenizer")
        eos_id, pad_id = self.token_map.teacher_eos_id, self.tokenizer.pad_token_id
        self.pad_id = pad_id if pad_id is not None else eos_id
        self.stop_ids = {eos_id, self.tokenizer.eos_token_id, pad_id} - {None}
        self.dropped_positions = self.dropped_positions_total = 0
        self._check_chat_template()

    @classmethod
    def from_pretrained(cls, path: str | Path, student_processor, dtype: torch.dtype | str | None = None,
                        device: str | torch.device | None = None, **kwargs) -> "Qwen3ASRTeacher":
        """From a transformers-format Qwen3-ASR dir (e.g. Qwen/Qwen3-ASR-1.7B-hf), no remote code; `dtype`
        (a torch dtype or its name) defaults to the checkpoint's own; kwargs go to the constructor."""
        config = read_config_json(path)
        if config.get("model_type") != "qwen3_asr":
            raise ValueError(f"{path}/config.json: model_type is {config.get('model_type')!r}; a Qwen3-ASR teacher "
                             "needs 'qwen3_asr' (transformers' Qwen3ASRForConditionalGeneration)")
        if "thinker_config" in config:
            raise ValueError(f"{path}: this is the original Qwen3-ASR release layout (thinker_config, remote code). "
                             "Use the transformers conversion (Qwen/Qwen3-ASR-*-hf, or transformers' "
                             "models/qwen3_asr/convert_qwen3_asr_to_hf.py)")
        if isinstance(dtype, str):
            name, dtype = dtype, getattr(torch, dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"teacher dtype {name!r} is not a torch dtype (float32, bfloat16, float16)")
        # Straight onto the device: a CPU copy first would cost the time and host memory of a second load.
        placement = {"device_map": torch.device(device)} if device is not None else {}
        model, info = Qwen3ASRForConditionalGeneration.from_pretrained(path, dtype=dtype or "auto",
                                                                       output_loading_info=True, **placement)
        raise_on_loading_info(info, f"teacher {path}")
        kwargs.setdefault("name", f"qwen3_asr:{Path(path).name}")
        return cls(model, Qwen3ASRProcessor.from_pretrained(path), student_processor, **kwargs)

    # ---- prompts ---------------------------------------------------------------------------
    def prompt(self, language: str | None) -> str:
        """Prompt text before placeholder expansion; `language` (ISO code) is forced where the model knows it."""
        name = language_name(language)
        return PROMPT + (FORCED_LANGUAGE.format(name=name) if name else "")

    def _check_chat_template(self) -> None:
        """A checkpoint that ships a chat template must render our prompt: otherwise the teacher would score
        under a prompt it was not trained with, and nothing downstream would notice."""
        if not getattr(self.processor, "chat_template", None):
            return
        rendered = self.processor.apply_transcription_request(audio=[np.zeros(16000, np.float32)], language=["en"],
                                                              tokenize=False)[0]
        if rendered != self.prompt("en"):
            raise ValueError(f"the teacher's chat template renders {rendered!r}, train.teachers.qwen3_asr builds "
                             f"{self.prompt('en')!r}: update PROMPT for this checkpoint")

    # ---- inputs ----------------------------------------------------------------------------
    def _device_dtype(self):
        param = next(self.model.parameters())
        return param.device, param.dtype

    def _embed(self, ids_B_L: torch.Tensor, audio_rows_N_D: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the audio placeholders replaced by the audio embeddings in row-major order,
        as Qwen3ASRModel.forward does (for the header decode; scoring builds its rows in train.teachers.scoring)."""
        return embed_with_audio(self.model.get_input_embeddings(), ids_B_L, ids_B_L == self.audio_token_id,
                                audio_rows_N_D)

    @torch.no_grad()
    def encode_utterances(self, batch: dict, indices) -> dict[int, UtteranceInputs]:
        """Prompt ids and audio embeddings of the batch rows `indices`, each utterance once.

        A clip's scores never depend on which clips share its batch: each clip is featurised alone
        (given a list, the processor pads the waveforms first; the last STFT frames of a shorter clip
        then see zeros instead of their reflection, the padding enters its last encoder chunk, and it can
        gain a frame and a placeholder), and the encoder, which convolves each 100-frame chunk and
        attends within windows of one clip, keeps no output of the whole masked chunks that pad it to the
        longest clip of its encoder call."""
        if batch.get("audio") is None:
            raise ValueError("the Qwen3-ASR teacher needs the raw audio of the batch (batch['audio']), which the "
                             "collator keeps only with keep_audio=True: set data.keep_audio=true")
        self.model.eval()  # whatever a launcher did to it since: dropout would make scores random
        device, _ = self._device_dtype()
        # A GPU teacher featurises there too: on a CPU core the STFT of a 30 s clip takes ~0.1 s.
        on_device = {"device": str(device)} if device.type == "cuda" else {}
        wanted = sorted({int(i) for i in indices})
        languages = [batch["languages"][i] if batch.get("languages") else None for i in wanted]
        inputs = [self.processor(text=[self.prompt(language)], audio=[np.asarray(batch["audio"][i], np.float32)],
                                 return_tensors="pt", **on_device) for i, language in zip(wanted, languages)]
        prompts = [x["input_ids"][0].to(device) for x in inputs]
        audio = self._encode_audio([x["input_features"][0] for x in inputs],
                                   [x["input_features_mask"][0] for x in inputs],
                                   [int((p == self.audio_token_id).sum()) for p in prompts])
        names = [language_name(language) for language in languages]
        unforced = [j for j, name in enumerate(names) if name is None]
        for j, ids in zip(unforced, self._headers([prompts[j] for j in unforced], [audio[j] for j in unforced])):
            prompts[j] = ids
        return {i: UtteranceInputs(p, a, name) for i, p, a, name in zip(wanted, prompts, audio, names)}

    def _groups(self, sizes: list[int]) -> list[list[int]]:
        """Indices in groups of at most `encode_batch_size`, similar sizes together (less padding)."""
        order = sorted(range(len(sizes)), key=sizes.__getitem__)
        step = self.encode_batch_size or max(len(order), 1)
        return [order[lo: lo + step] for lo in range(0, len(order), step)]

    def _encode_audio(self, feats: list[torch.Tensor], masks: list[torch.Tensor],
                      counts: list[int]) -> list[torch.Tensor]:
        """Projected audio embeddings (audio_N_D) of each clip's features (feats_M_F, mask_F), as many
        as its prompt has placeholders (`counts`), `encode_batch_size` clips per encoder call."""
        device, dtype = self._device_dtype()
        out: list[torch.Tensor | None] = [None] * len(feats)
        for group in self._groups([f.shape[-1] for f in feats]):
            # Every clip's frames are already a whole number of encoder chunks, so is the padding.
            frames = max(feats[j].shape[-1] for j in group)
            feats_B_M_F = torch.stack([F.pad(feats[j], (0, frames - feats[j].shape[-1])) for j in group])
            mask_B_F = torch.stack([F.pad(masks[j], (0, frames - masks[j].shape[-1])) for j in group])
            audio_N_D = self.model.get_audio_features(feats_B_M_F.to(device, dtype), mask_B_F.to(device)).pooler_output
            sizes = [counts[j] for j in group]
            if audio_N_D.shape[0] != sum(sizes):
                raise RuntimeError(f"the audio encoder gave {audio_N_D.shape[0]} embeddings for {sum(sizes)} "
                                   "placeholders: processor and model disagree on the audio token count")
            for j, part in zip(group, audio_N_D.split(sizes)):
                out[j] = part
        return out

    def _headers(self, prompts: list[torch.Tensor], audio: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each prompt followed by the teacher's own `language X<asr_text>` header (where no language is forced)."""
        out: list[torch.Tensor | None] = [None] * len(prompts)
        for group in self._groups([len(p) for p in prompts]):
            for j, ids in zip(group, self._decode_headers([prompts[j] for j in group], [audio[j] for j in group])):
                out[j] = ids
        return out

    def _decode_headers(self, prompts: list[torch.Tensor], audio: list[torch.Tensor]) -> list[torch.Tensor]:
        """Greedy headers of left-padded prompts with the KV cache: one prefill, then one token a step. A row
        stops at a stop id (dropped) or `<asr_text>` (kept); `<asr_text>` is appended to a row without one."""
        device = prompts[0].device
        width = max(len(p) for p in prompts)
        ids_B_L = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)
        attn_B_L = torch.zeros_like(ids_B_L)
        for b, p in enumerate(prompts):
            ids_B_L[b, width - len(p):], attn_B_L[b, width - len(p):] = p, 1
        positions_B_L = left_padded_positions(attn_B_L)
        out = self.model(inputs_embeds=self._embed(ids_B_L, torch.cat(audio)), attention_mask=attn_B_L,
                         position_ids=positions_B_L, use_cache=True, logits_to_keep=1)
        next_pos_B = positions_B_L[:, -1] + 1
        headers: list[list[int]] = [[] for _ in prompts]
        live = [True] * len(prompts)
        for step in range(self.max_header_tokens):
            logits_B_V = out.logits[:, -1]
            # A placeholder in the header would take one of the audio embeddings when the rows are scored.
            logits_B_V[:, self.audio_token_id] = float("-inf")
            next_B = logits_B_V.argmax(-1)
            for b, token in enumerate(next_B.tolist()):
                if live[b]:
                    live[b] = token not in self.stop_ids and token != self.asr_text_id
                    if token not in self.stop_ids:
                        headers[b].append(token)
            if not any(live) or step == self.max_header_tokens - 1:
                break
            attn_B_L = torch.cat([attn_B_L, torch.ones_like(attn_B_L[:, :1])], dim=1)
            out = self.model(input_ids=next_B[:, None], attention_mask=attn_B_L, position_ids=next_pos_B[:, None],
                             cache=out.cache, use_cache=True)
            next_pos_B = next_pos_B + 1
        return [torch.cat([p, p.new_tensor(h if h and h[-1] == self.asr_text_id else h + [self.asr_text_id])])
                for p, h in zip(prompts, headers)]

    # ---- scoring ---------------------------------------------------------------------------
    def _forward(self, embeds_B_L_D, attention_mask_B_L, position_ids_B_L, logits_to_keep: int) -> torch.Tensor:
        return self.model(inputs_embeds=embeds_B_L_D, attention_mask=attention_mask_B_L, position_ids=position_ids_B_L,
                          logits_to_keep=logits_to_keep).logits

    @torch.no_grad()
    def score(self, batch: dict, rollout: Rollout, extra_ids_B_T_E: torch.Tensor | None = None, k: int = 32,
              temperature: float = 1.0, full: bool = False) -> TokenScores:
        """TokenScores of every rollout position, in the student's vocabulary (see train.teachers.base): each
        row is its utterance's prompt and header, then the student's tokens (train.teachers.scoring)."""
        device, _ = self._device_dtype()
        source_B = [int(s) for s in rollout.source_B.tolist()]
        utts = self.encode_utterances(batch, source_B)
        model = TeacherModel(self.model.get_input_embeddings(), self._forward, self.audio_token_id, self.pad_id,
                             device)
        scores, dropped = score_rollout(model, self.token_map, [utts[s].prompt_ids_S for s in source_B],
                                        [utts[s].audio_embeds_N_D for s in source_B], rollout.tokens_B_T,
                                        rollout.mask_B_T, self.rows_per_forward, extra_ids_B_T_E, k, temperature,
                                        full)
        self.dropped_positions = dropped
        self.dropped_positions_total += dropped
        return scores
