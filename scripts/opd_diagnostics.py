"""Where does the teacher's signal on a student's own transcripts point? A same-family teacher scores
the student's greedy rollouts on labelled clips, as OPD sees them.

    python scripts/opd_diagnostics.py --student runs/toy/base/final --teacher runs/toy/teacher/final \
        --manifest data/toy_tts/dev.jsonl --language-prompt

Prints (and writes with --out) per position kind:
  - the teacher's mean log-prob of the student's token, and how often it is the teacher's argmax;
  - at the student's end of transcript: the teacher's probability of ending there too, and how
    often the teacher would rather go on;
  - lengths: the student's transcripts, the teacher's own greedy ones and the references, in characters;
  - word boundaries per clip (character vocabularies, where " " is one token): the teacher's and the
    student's summed probability of a space over the student's positions, the spaces the student
    wrote and those in the references. Forward KL moves the student's space probability towards
    the teacher's: a teacher that expects more boundaries than the student writes teaches it to
    split words (word insertions) even where it spells the characters better;
  - the mean entropy (nats) of the student's and the teacher's next-token distributions over the
    student's positions: how sure each is on the student's own prefixes.
If the teacher would rather go on where the student stops, OPD pushes the student to longer
outputs (insertions); if its argmax agrees with the student's tokens about as often as the
student is right, the teacher is not correcting the student on its own prefixes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import HelpFormatter  # noqa: E402
from train.config import DataConfig, SourceConfig  # noqa: E402
from train.data.loader import make_loader  # noqa: E402
from train.models import load_student, transcribe  # noqa: E402
from train.opd.rollout import rescore, rollout  # noqa: E402
from train.teachers.same_family import SameFamilyTeacher  # noqa: E402


@torch.no_grad()
def diagnose(student, processor, teacher: SameFamilyTeacher, manifest: str, clips: int, language_prompt: bool,
             max_new_tokens: int = 160) -> dict:
    data = DataConfig(train=[SourceConfig(path=manifest)], max_batch_seconds=60.0, max_batch_size=32,
                      num_workers=0, language_prompt=language_prompt, keep_audio=True)
    loader = make_loader(data.train, processor, data, shuffle=False)
    eos = set(processor.eos_token_ids)
    space = space_token_id(processor)
    sums = {"token_count": 0, "token_logp": 0.0, "token_argmax": 0, "end_count": 0, "end_logp": 0.0, "end_argmax": 0,
            "student_chars": 0, "teacher_chars": 0, "reference_chars": 0, "clips": 0,
            "teacher_space_mass": 0.0, "student_space_mass": 0.0, "student_spaces": 0, "reference_spaces": 0,
            "student_entropy": 0.0, "teacher_entropy": 0.0}
    for batch in loader:
        if not batch["size"]:
            continue
        out = rollout(student, processor, batch, max_new_tokens=max_new_tokens)
        space_B_T_1 = None if space is None else torch.full_like(out.tokens_B_T, space).unsqueeze(-1)
        scores = teacher.score(batch, out, extra_ids_B_T_E=space_B_T_1, k=1, full=True)
        m = out.mask_B_T
        student_logp = torch.log_softmax(rescore(student, batch, out).float(), dim=-1)
        for who, logp in (("student", student_logp), ("teacher", scores.full_logp_B_T_V.float())):
            sums[f"{who}_entropy"] += float(-(logp.exp() * logp.clamp(min=-1e30)).sum(-1)[m].sum())
        if space is not None:
            sums["teacher_space_mass"] += float(scores.extra_logp_B_T_E[..., 0].float().exp()[m].sum())
            sums["student_space_mass"] += float(student_logp[..., space].exp()[m].sum())
            sums["student_spaces"] += int(((out.tokens_B_T == space) & m).sum())
            sums["reference_spaces"] += sum(t.count(" ") for t in batch["texts"])
        is_end = torch.zeros_like(out.mask_B_T)
        for i in eos:
            is_end |= out.tokens_B_T == i
        is_end &= out.mask_B_T
        body = out.mask_B_T & ~is_end
        argmax = scores.topk_ids_B_T_K[..., 0] == out.tokens_B_T
        for kind, where in (("token", body), ("end", is_end)):
            sums[f"{kind}_count"] += int(where.sum())
            sums[f"{kind}_logp"] += float(scores.sampled_logp_B_T[where].sum())
            sums[f"{kind}_argmax"] += int((argmax & where).sum())
        student_text = [processor.decode(row[m].tolist()) for row, m in zip(out.tokens_B_T, out.mask_B_T)]
        teacher_text = transcribe(teacher.model, teacher.processor, batch["audio"],
                                  languages=batch["languages"] if language_prompt else None,
                                  max_new_tokens=max_new_tokens)
        sums["student_chars"] += sum(len(t) for t in student_text)
        sums["teacher_chars"] += sum(len(t) for t in teacher_text)
        sums["reference_chars"] += sum(len(t) for t in batch["texts"])
        sums["clips"] += batch["size"]
        if sums["clips"] >= clips:
            break
    n, positions = sums["clips"], max(sums["token_count"] + sums["end_count"], 1)
    return {
        "clips": n,
        "teacher_logp_of_student_tokens": sums["token_logp"] / max(sums["token_count"], 1),
        "teacher_argmax_is_student_token": sums["token_argmax"] / max(sums["token_count"], 1),
        "teacher_p_end_where_student_ends": float(torch.tensor(sums["end_logp"] / max(sums["end_count"], 1)).exp()),
        "teacher_argmax_is_end_where_student_ends": sums["end_argmax"] / max(sums["end_count"], 1),
        "chars_per_clip": {"student": sums["student_chars"] / sums["clips"],
                           "teacher": sums["teacher_chars"] / sums["clips"],
                           "reference": sums["reference_chars"] / sums["clips"]},
        "entropy_nats": {"student": sums["student_entropy"] / positions, "teacher": sums["teacher_entropy"] / positions},
        "spaces_per_clip": None if space is None else {
            "teacher_expected": sums["teacher_space_mass"] / n, "student_expected": sums["student_space_mass"] / n,
            "student_written": sums["student_spaces"] / n, "reference": sums["reference_spaces"] / n},
    }


def space_token_id(processor) -> int | None:
    """The id of " " where the vocabulary spells it as one token of its own (character vocabularies)."""
    ids = processor.tokenizer.encode(" ", add_special_tokens=False)
    return ids[0] if len(ids) == 1 and processor.tokenizer.decode(ids) == " " else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--student", required=True, help="the student's model dir")
    parser.add_argument("--teacher", required=True, help="a same-family teacher's model dir")
    parser.add_argument("--manifest", required=True, help="labelled clips")
    parser.add_argument("--clips", type=int, default=200, help="at most this many clips of the manifest")
    parser.add_argument("--language-prompt", action="store_true",
                        help="name each clip's language in both models' prompts")
    parser.add_argument("--out", help="write the numbers as JSON here")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    student, processor = load_student(args.student)
    teacher = SameFamilyTeacher.from_pretrained(args.teacher, processor, student.config.text_config.vocab_size,
                                                language_prompt=args.language_prompt)
    result = diagnose(student.eval(), processor, teacher, args.manifest, args.clips, args.language_prompt)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
