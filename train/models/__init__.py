"""The student model (GlmAsr: RoPE Whisper encoder -> MLP adapter -> Qwen decoder), its processor and checkpoints."""

from train.models.build import build_student, configure_training, load_student, save_student
from train.models.generation import Generated, generate, transcribe
from train.models.processor import ArkProcessor, audio_token_count

__all__ = ["ArkProcessor", "Generated", "audio_token_count", "build_student", "configure_training", "generate",
           "load_student", "save_student", "transcribe"]
