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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen3ASRForConditionalGeneration, Qwen3ASRProcessor
from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

from train.models.generation import left_padded_positions
from train.models.weights import raise_on_loading_info, read_config_json
from train.opd.rollout import Rollout
from train.teachers.base import TokenScores
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
    `max_header_tokens` bounds the teacher's own language header where no language is forced
    (`<asr_text>` is appended if it has not come by then).
    `dropped_positions` counts, for the last call, rollout positions whose sampled token has no
    teacher equivalent (removed from the returned mask); `dropped_positions_total` over all calls.
    """

    def __init__(self, model: Qwen3ASRForConditionalGeneration, processor: Qwen3ASRProcessor, student_processor,
                 student_vocab_size: int | None = None, max_unmapped: float = DEFAULT_MAX_UNMAPPED_SHARE,
                 rows_per_forward: int | None = None, max_header_tokens: int = 12, name: str = "qwen3_asr"):
        self.model = model.eval().requires_grad_(False)
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.name, self.rows_per_forward, self.max_header_tokens = name, rows_per_forward, max_header_tokens
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
        model, info = Qwen3ASRForConditionalGeneration.from_pretrained(path, dtype=dtype or "auto",
                                                                       output_loading_info=True)
        raise_on_loading_info(info, f"teacher {path}")
        if device is not None:
            model = model.to(device)
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

    def _embed(self, ids_B_L: torch.Tensor, audio_rows_N_D: torch.Tensor,
               audio_ids_B_L: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the audio placeholders (found in `audio_ids_B_L`, default `ids_B_L`)
        replaced by the audio embeddings in row-major order, as Qwen3ASRModel.forward does."""
        embeds = self.model.get_input_embeddings()(ids_B_L)
        where = self.model.model.get_placeholder_mask(audio_ids_B_L if audio_ids_B_L is not None else ids_B_L,
                                                      inputs_embeds=embeds, audio_features=audio_rows_N_D)
        return embeds.masked_scatter(where, audio_rows_N_D.to(embeds.dtype))

    def _header(self, prompt_ids_S: torch.Tensor, audio_N_D: torch.Tensor) -> torch.Tensor:
        """The teacher's own `language X<asr_text>` header, greedy, when no language is forced."""
        ids = prompt_ids_S[None]
        for _ in range(self.max_header_tokens):
            logits = self.model(inputs_embeds=self._embed(ids, audio_N_D), logits_to_keep=1).logits[0, -1]
            next_id = int(logits.argmax())
            if next_id in self.stop_ids:
                break
            ids = torch.cat([ids, ids.new_tensor([[next_id]])], dim=1)
            if next_id == self.asr_text_id:
                return ids[0]
        return torch.cat([ids[0], ids.new_tensor([self.asr_text_id])])

    @torch.no_grad()
    def encode_utterances(self, batch: dict, indices) -> dict[int, UtteranceInputs]:
        """Prompt ids and audio embeddings of the batch rows `indices`: one encoder call per utterance,
        features from the teacher's own extractor on each clip alone (so a clip's scores never depend
        on which clips share its batch)."""
        if batch.get("audio") is None:
            raise ValueError("the Qwen3-ASR teacher needs the raw audio of the batch (batch['audio']), which the "
                             "collator keeps only with keep_audio=True: set data.keep_audio=true")
        self.model.eval()  # whatever a launcher did to it since: dropout would make scores random
        device, dtype = self._device_dtype()
        out = {}
        for i in sorted({int(i) for i in indices}):
            language = batch["languages"][i] if batch.get("languages") else None
            clip = np.asarray(batch["audio"][i], dtype=np.float32)
            inputs = self.processor(text=[self.prompt(language)], audio=[clip], return_tensors="pt")
            audio = self.model.get_audio_features(inputs["input_features"].to(device, dtype),
                                                  inputs["input_features_mask"].to(device)).pooler_output
            prompt_ids = inputs["input_ids"][0].to(device)
            name = language_name(language)
            if name is None:
                prompt_ids = self._header(prompt_ids, audio)
            out[i] = UtteranceInputs(prompt_ids, audio, name)
        return out

    # ---- scoring ---------------------------------------------------------------------------
    def _logits(self, utts: dict[int, UtteranceInputs], source_B: list[int], teacher_tokens_B_T: torch.Tensor,
                mask_B_T: torch.Tensor) -> torch.Tensor:
        """Teacher logits_B_T_Vt at the positions that predict each rollout token: left-padded prompts
        (each row its utterance's), then the mapped tokens; one forward over inputs_embeds. A sampled
        token with no teacher equivalent stands as the teacher's pad token (its own score is dropped)."""
        prompts = [utts[s].prompt_ids_S for s in source_B]
        width, new = max(len(p) for p in prompts), teacher_tokens_B_T.shape[1]
        ids = torch.full((len(prompts), width + new), self.pad_id, dtype=torch.long, device=teacher_tokens_B_T.device)
        attn = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, width - len(p): width], attn[b, width - len(p): width] = p, 1
        # Rollout tokens never stand for audio: placeholders are looked up in the prompt columns only.
        audio_ids = ids.clone()
        ids[:, width:] = teacher_tokens_B_T.masked_fill(teacher_tokens_B_T < 0, self.pad_id)
        attn[:, width:] = mask_B_T.long()
        embeds = self._embed(ids, torch.cat([utts[s].audio_embeds_N_D for s in source_B]), audio_ids)
        out = self.model(inputs_embeds=embeds, attention_mask=attn, position_ids=left_padded_positions(attn),
                         logits_to_keep=new + 1)
        # Kept: the prompt's last position (predicts token 0) ... the last token (predicts nothing scored).
        return out.logits[:, :new]

    @torch.no_grad()
    def score(self, batch: dict, rollout: Rollout, extra_ids_B_T_E: torch.Tensor | None = None, k: int = 32,
              temperature: float = 1.0, full: bool = False) -> TokenScores:
        """TokenScores of every rollout position, in the student's vocabulary (see train.teachers.base)."""
        device, _ = self._device_dtype()
        source_B = [int(s) for s in rollout.source_B.tolist()]
        utts = self.encode_utterances(batch, source_B)
        tokens_B_T = rollout.tokens_B_T.to(device)
        mask_B_T = rollout.mask_B_T.to(device).bool()
        teacher_tokens_B_T = self.token_map.to_teacher(tokens_B_T)
        extra = extra_ids_B_T_E.to(device) if extra_ids_B_T_E is not None else None
        step = self.rows_per_forward or len(source_B)
        parts, dropped = [], 0
        for lo in range(0, len(source_B), step):
            rows = slice(lo, lo + step)
            logits = self._logits(utts, source_B[rows], teacher_tokens_B_T[rows], mask_B_T[rows])
            part, n = self.token_map.gather_scores(logits, tokens_B_T[rows], mask_B_T[rows], k, temperature,
                                                   extra[rows] if extra is not None else None, full)
            parts.append(part)
            dropped += n
        self.dropped_positions = dropped
        self.dropped_positions_total += dropped
        return _to(_cat_scores(parts), rollout.tokens_B_T.device)


def _cat_scores(parts: list[TokenScores]) -> TokenScores:
    if len(parts) == 1:
        return parts[0]
    values = {}
    for field in dataclasses.fields(TokenScores):
        items = [getattr(p, field.name) for p in parts]
        values[field.name] = torch.cat(items) if isinstance(items[0], torch.Tensor) else items[0]
    return TokenScores(**values)


def _to(scores: TokenScores, device: torch.device) -> TokenScores:
    return TokenScores(**{f.name: (v.to(device) if isinstance(v := getattr(scores, f.name), torch.Tensor) else v)
                          for f in dataclasses.fields(TokenScores)})
