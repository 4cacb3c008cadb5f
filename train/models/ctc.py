"""An auxiliary CTC head on the student's audio branch: a training aid for supervised stages.

A decoder trained from scratch can lower its loss by modelling the transcripts alone and ignore
the audio for a long time (measured on the toy corpus: ENVIRONMENT.md). A CTC loss on the audio
branch gives the encoder and adapter a gradient that only listening can reduce. The head is a
linear layer over the encoder outputs (50 frames/s) or the adapter outputs (one per `<|audio|>`
placeholder, 12.5 frames/s) onto the decoder's vocabulary plus one blank (the last class).

`StudentWithCTC` wraps the student for training only: the student's forward is untouched (the
audio branch's output is read with a forward hook), and the saved model is the student alone
(`student_state_dict`), so inference never sees the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from train.models.processor import audio_token_count_from_frames
from train.models.student import conv_lengths, merge_factor_of

SOURCES = ("encoder", "adapter")


@dataclass
class CTCOutput:
    student_out: object  # what the student's own forward returned (its output, or values_N with `scored=`)
    ctc_log_probs_B_L_C: torch.Tensor  # C = decoder vocabulary + 1 (blank last)
    ctc_lengths_B: torch.Tensor  # valid frames per clip


def _glmasr(student):
    """The GlmAsr model inside a plain or a peft-wrapped student."""
    return student.get_base_model() if hasattr(student, "get_base_model") else student


class StudentWithCTC(nn.Module):
    """The student plus a CTC head over its encoder or adapter outputs."""

    def __init__(self, student, source: str = "encoder"):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"ctc.source must be one of {SOURCES}, got {source!r}")
        self.student, self.source = student, source
        config = _glmasr(student).config
        width = config.audio_config.hidden_size if source == "encoder" else config.text_config.hidden_size
        self.blank = config.text_config.vocab_size
        self.ctc_head = nn.Linear(width, self.blank + 1)
        self.merge_factor = merge_factor_of(config)

    def _tapped_module(self) -> nn.Module:
        inner = _glmasr(self.student).model
        return inner.audio_tower if self.source == "encoder" else inner.multi_modal_projector

    def forward(self, input_ids, attention_mask, input_features, input_features_mask, **student_kwargs) -> CTCOutput:
        tapped = {}

        def keep(_module, _inputs, output):
            tapped["hidden_B_L_D"] = output.last_hidden_state if self.source == "encoder" else output

        handle = self._tapped_module().register_forward_hook(keep)
        try:
            out = self.student(input_ids=input_ids, attention_mask=attention_mask, input_features=input_features,
                               input_features_mask=input_features_mask, **student_kwargs)
        finally:
            handle.remove()
        mel_frames = input_features_mask.sum(-1)
        lengths = conv_lengths(mel_frames) if self.source == "encoder" else audio_token_count_from_frames(
            mel_frames, self.merge_factor)
        log_probs = torch.log_softmax(self.ctc_head(tapped["hidden_B_L_D"]).float(), dim=-1)
        return CTCOutput(out, log_probs, lengths)


def ctc_targets(labels_B_T: torch.Tensor, drop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC targets from the collator's labels: the transcript tokens (label >= 0) without the EOS
    ids. Returns (targets_B_S padded with 0, lengths_B)."""
    keep_B_T = labels_B_T >= 0
    for i in drop_ids:
        keep_B_T &= labels_B_T != i
    lengths = keep_B_T.sum(-1)
    targets = torch.zeros(labels_B_T.shape[0], max(int(lengths.max()) if len(lengths) else 0, 1),
                          dtype=torch.long, device=labels_B_T.device)
    for row in range(labels_B_T.shape[0]):
        targets[row, : lengths[row]] = labels_B_T[row][keep_B_T[row]]
    return targets, lengths


def ctc_loss_per_clip(log_probs_B_L_C: torch.Tensor, lengths_B: torch.Tensor, targets_B_S: torch.Tensor,
                      target_lengths_B: torch.Tensor, blank: int) -> torch.Tensor:
    """Negative log-likelihood of each clip's target under CTC (torch's implementation). A clip with
    more targets than frames cannot be aligned: its loss is 0 (and `infeasible` counts it)."""
    return nn.functional.ctc_loss(log_probs_B_L_C.transpose(0, 1), targets_B_S, lengths_B, target_lengths_B,
                                  blank=blank, reduction="none", zero_infinity=True)


def infeasible(lengths_B: torch.Tensor, target_lengths_B: torch.Tensor) -> int:
    """Clips with more CTC targets than frames (a lower bound: repeated labels also need a blank)."""
    return int((target_lengths_B > lengths_B).sum())


def student_state_dict(state_dict: dict | None) -> dict | None:
    """The student's own weights out of a `StudentWithCTC` state dict (None stays None: ZeRO-3 ranks > 0)."""
    if state_dict is None:
        return None
    return {k[len("student."):]: v for k, v in state_dict.items() if k.startswith("student.")}


def unwrap_student(model):
    """The student inside a `StudentWithCTC`, or the model itself."""
    return model.student if isinstance(model, StudentWithCTC) else model
