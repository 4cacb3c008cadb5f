"""Scoring: normalisers, WER/CER with their parts, language identification and fidelity."""

from train.eval.error_rates import error_rates
from train.eval.language_id import detect_language, language_fidelity
from train.eval.normalizers import default_metric, normalize

__all__ = ["default_metric", "detect_language", "error_rates", "language_fidelity", "normalize"]
