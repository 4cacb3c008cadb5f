"""Time of Qwen3ASRTeacher.score, batched against the previous one-clip-at-a-time path, in the same run.

    python scripts/bench_teacher.py                                              # tiny random Qwen3-ASR, CPU
    python scripts/bench_teacher.py --size 1.7b --device cuda --dtype bfloat16   # Qwen3-ASR-1.7B's shape

Random weights (the tiny model is the tests' one, tests/teachers/qwen3_fixtures.py). `--batch` clips of
`--min-seconds`..`--max-seconds`, languages cycling through `--languages`: hr, sk, sl, et, lt are not
among Qwen3-ASR's forced languages, so the teacher writes those clips' `language X<asr_text>` header
itself, `--header-tokens` tokens at most (a random model never ends it; a real one needs about 3-4).
`--samples` rollout rows per clip of up to `--tokens` random student tokens with random top-k ids, scored
`--rows-per-forward` rows per forward on both paths.

  batched        train.teachers.qwen3_asr as it is: each clip featurised alone, `--encode-batch-size`
                 clips per encoder call, the headers decoded together, left-padded, with the KV cache.
  one_at_a_time  the path it replaced (OneClipAtATime below): processor and encoder per clip, each
                 header token a full forward over the prompt without a cache, one clip at a time.

Prints seconds per call (the best of `--repeats`, the two paths interleaved, after a warm-up: on a
shared CPU the best is the least disturbed) of `score` and of its input part
(`encode_utterances`), their ratios, the largest difference of the two paths' scores and how many
headers agree; writes the JSON to scripts/results/bench_teacher_<device>_<size>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import HelpFormatter, config_errors_exit  # noqa: E402
from train.config import ModelConfig, load_config  # noqa: E402
from train.models import build_student  # noqa: E402
from train.opd.rollout import Rollout  # noqa: E402
from train.teachers.qwen3_asr import Qwen3ASRTeacher, UtteranceInputs, language_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STUDENT_BASE_VOCAB = 151643  # the shared Qwen2.5 BPE ids: every one maps to the teacher

# Shapes with random weights. 1.7b: transformers' Qwen3ASRConfig defaults (the -1.7B-hf checkpoint's text
# model) with the audio projection sized to it; 0.6b: Qwen3-0.6B's text model and an encoder of about the
# 180M parameters reported for it (approximate); small: a CPU-sized shape where the forwards cost more
# than the Python around them.
SIZES = {
    "small": dict(audio=dict(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024,
                             output_dim=512, downsample_hidden_size=64),
                  text=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                            num_key_value_heads=4, head_dim=64)),
    "0.6b": dict(audio=dict(d_model=896, encoder_layers=18, encoder_attention_heads=14, encoder_ffn_dim=3584,
                            output_dim=1024, downsample_hidden_size=480),
                 text=dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128)),
    "1.7b": dict(audio=dict(output_dim=2048), text={}),
}


class OneClipAtATime(Qwen3ASRTeacher):
    """The previous input path of Qwen3ASRTeacher, kept here only to be timed against."""

    def _header(self, prompt_ids_S: torch.Tensor, audio_N_D: torch.Tensor) -> torch.Tensor:
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
        self.model.eval()
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


def build_teacher_model(size: str, device: torch.device, dtype: torch.dtype | None):
    """(model, processor): a random Qwen3-ASR of `size` with the real tokenizer (built offline)."""
    from transformers import (Qwen3ASRConfig, Qwen3ASRFeatureExtractor, Qwen3ASRForConditionalGeneration,
                              Qwen3ASRProcessor)

    from tests.teachers.qwen3_fixtures import (CHAT_TEMPLATE, IDS, TEACHER_VOCAB_SIZE, qwen3_asr_tokenizer,
                                               tiny_qwen3_asr)

    if size == "tiny":
        model, processor = tiny_qwen3_asr(CHAT_TEMPLATE)
        return model.to(device, dtype or torch.float32), processor
    shape = SIZES[size]
    config = Qwen3ASRConfig(audio_config=shape["audio"],
                            text_config=dict(vocab_size=TEACHER_VOCAB_SIZE, tie_word_embeddings=True, **shape["text"]),
                            audio_token_id=IDS["<|audio_pad|>"])
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a CPU init of 2B weights alone takes minutes
        model = Qwen3ASRForConditionalGeneration(config)
    processor = Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=qwen3_asr_tokenizer(),
                                  chat_template=CHAT_TEMPLATE)
    return model.to(dtype or torch.float32).eval(), processor


def make_inputs(args, student_vocab: int):
    """(batch, rollout, extra ids): raw clips and languages (all the teacher reads), random student rows."""
    rng = np.random.default_rng(0)
    seconds = np.linspace(args.min_seconds, args.max_seconds, args.batch)
    clips = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]
    languages = [args.languages[i % len(args.languages)] for i in range(args.batch)]
    g = torch.Generator().manual_seed(0)
    rows = args.batch * args.samples
    tokens_B_T = torch.randint(0, STUDENT_BASE_VOCAB, (rows, args.tokens), generator=g)
    lengths_B = torch.randint(args.tokens // 2, args.tokens + 1, (rows,), generator=g)
    mask_B_T = torch.arange(args.tokens)[None] < lengths_B[:, None]
    ro = Rollout(tokens_B_T=tokens_B_T, mask_B_T=mask_B_T, logprobs_B_T=torch.zeros(rows, args.tokens),
                 source_B=torch.arange(args.batch).repeat_interleave(args.samples),
                 prompt_ids_B_S=torch.zeros(rows, 0, dtype=torch.long),
                 prompt_mask_B_S=torch.zeros(rows, 0, dtype=torch.long))
    extra_B_T_E = torch.randint(0, min(student_vocab, STUDENT_BASE_VOCAB), (rows, args.tokens, args.k), generator=g)
    return {"audio": clips, "languages": languages}, ro, extra_B_T_E


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - t0, result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--size", choices=["tiny", *SIZES], default="tiny",
                        help="the teacher's shape (random weights)")
    parser.add_argument("--student-config", default="configs/models/tiny.yaml",
                        help="the student whose tokenizer the rollout uses (only its processor is needed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where it runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    parser.add_argument("--batch", type=int, default=8, help="clips per score call")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="shortest clip")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="longest clip")
    parser.add_argument("--languages", type=lambda s: s.split(","), default="hr,de,sk,en,sl,fr,et,lt".split(","),
                        help="comma-separated codes the clips cycle through")
    parser.add_argument("--header-tokens", type=int, default=4,
                        help="most tokens of a header the teacher writes itself")
    parser.add_argument("--samples", type=int, default=2, help="rollout rows per clip")
    parser.add_argument("--tokens", type=int, default=32, help="most student tokens per row")
    parser.add_argument("--k", type=int, default=32, help="top-k ids scored per position")
    parser.add_argument("--rows-per-forward", type=int, default=4, help="rollout rows per teacher forward")
    parser.add_argument("--encode-batch-size", type=int, default=16, help="clips per encoder call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path (the best counts)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--results", default=None, help="default scripts/results/bench_teacher_<device>_<size>.json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    t0 = time.perf_counter()
    model, processor = build_teacher_model(args.size, device, dtype)
    student_cfg = load_config(ModelConfig, args.student_config)
    _, student_processor = build_student(student_cfg)
    build_s = time.perf_counter() - t0
    student_vocab = len(student_processor.tokenizer)
    settings = dict(rows_per_forward=args.rows_per_forward, max_header_tokens=args.header_tokens)
    batched = Qwen3ASRTeacher(model, processor, student_processor, encode_batch_size=args.encode_batch_size,
                              **settings)
    baseline = OneClipAtATime(model, processor, student_processor, **settings)
    batch, ro, extra = make_inputs(args, student_vocab)
    utts = range(args.batch)

    def score(teacher):
        return lambda: teacher.score(batch, ro, extra_ids_B_T_E=extra, k=args.k)

    def encode(teacher):
        return lambda: teacher.encode_utterances(batch, utts)

    report = {
        "size": args.size, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads",
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "teacher_parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "build_seconds": round(build_s, 1), "clips": args.batch,
        "audio_seconds": round(sum(len(c) for c in batch["audio"]) / 16000, 1),
        "clips_with_own_header": sum(language_name(lang) is None for lang in batch["languages"]),
        "header_tokens": args.header_tokens, "rows": ro.tokens_B_T.shape[0], "tokens": args.tokens, "k": args.k,
        "rows_per_forward": args.rows_per_forward, "encode_batch_size": args.encode_batch_size,
        "repeats": args.repeats,
    }
    paths = {"one_at_a_time": baseline, "batched": batched}
    results, best = {}, {}
    for name, teacher in paths.items():  # warm-up, and the peak memory of one call of each
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results[name] = (teacher.encode_utterances(batch, utts), score(teacher)())
        if device.type == "cuda":
            report[f"{name}_peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    for _ in range(args.repeats):  # interleaved, so that both paths meet the same load on a shared machine
        for name, teacher in paths.items():
            for part, fn in (("encode", encode(teacher)), ("score", score(teacher))):
                seconds, _ = _seconds(fn, device)
                best[name, part] = min(best.get((name, part), float("inf")), seconds)
    for (name, part), seconds in best.items():
        report[f"{name}_{part}_seconds"] = round(seconds, 4)
    report["encode_speedup"] = round(report["one_at_a_time_encode_seconds"] / report["batched_encode_seconds"], 2)
    report["score_speedup"] = round(report["one_at_a_time_score_seconds"] / report["batched_score_seconds"], 2)
    (old_utts, old), (new_utts, new) = results["one_at_a_time"], results["batched"]
    unforced = [i for i in utts if new_utts[i].language is None]
    same_inputs = [i for i in utts if torch.equal(old_utts[i].prompt_ids_S, new_utts[i].prompt_ids_S)]
    report["same_headers"] = f"{sum(i in same_inputs for i in unforced)}/{len(unforced)}"
    rows = torch.isin(ro.source_B, torch.tensor(same_inputs)) & ro.mask_B_T.any(-1)
    m = old.mask_B_T & rows[:, None]
    # Rows whose header differs (possible in bf16) are scored after different prompts: not comparable.
    report["max_abs_sampled_logp_diff"] = (float((old.sampled_logp_B_T[m] - new.sampled_logp_B_T[m]).abs().max())
                                           if m.any() else None)
    report["max_abs_audio_embedding_diff"] = max(
        float((old_utts[i].audio_embeds_N_D.float() - new_utts[i].audio_embeds_N_D.float()).abs().max()) for i in utts)
    print(json.dumps(report, indent=2))
    path = Path(args.results or RESULTS / f"bench_teacher_{device.type}_{args.size}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    with config_errors_exit():  # a wrong config key or value: one line, status 2
        main()
