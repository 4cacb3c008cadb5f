"""scripts/check_docs.py: every command, Python block and link in README.md and docs/ holds (so `make test`,
which CI runs, keeps them from rotting), and on small synthetic pages it catches each kind of rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_docs", ROOT / "scripts" / "check_docs.py")
check_docs = importlib.util.module_from_spec(_spec)
sys.modules["check_docs"] = check_docs  # its dataclasses look their module up there
_spec.loader.exec_module(check_docs)


def _failures(results) -> list[str]:
    return [str(r) for r in results if r.status == "FAIL"]


def _check(tmp_path: Path, text: str, name: str = "page.md"):
    page = tmp_path / name
    page.write_text(text)
    return check_docs.check([page], ROOT, out=lambda line: None)


def test_readme_and_docs_hold():
    printed = []
    results = check_docs.check(check_docs.default_files(ROOT), ROOT, out=printed.append)
    assert not _failures(results), "\n".join(_failures(results))
    assert {r.status for r in results} <= {"OK", "SKIP"}
    every_page = {Path(r.where.split(":")[0]).name for r in results}
    assert {"README.md", "training.md", "domain_adaptation.md", "recipe.md"} <= every_page


def test_every_docs_page_is_linked_from_the_readme_and_says_what_it_covers():
    readme = check_docs.read_page(ROOT / "README.md")
    linked = {target.split("#")[0] for _, target in readme.links}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"README.md does not link docs/{page.name}"
        lines = [ln for ln in page.read_text().splitlines() if ln.strip()]
        assert lines[0].startswith("# ") and not lines[1].startswith("#"), f"{page.name}: a title, then one line on what it covers"


BLOCK = "```bash\n{}\n```\n"


def test_a_missing_config_file_fails(tmp_path):
    results = _check(tmp_path, BLOCK.format(
        "python train/distill.py --config configs/distill/no_such.yaml\n"
        "accelerate launch --config_file configs/accelerate/no_such.yaml train/sft.py --config configs/sft/toy.yaml"))
    failures = _failures(results)
    assert len(failures) == 2, failures
    assert "configs/distill/no_such.yaml: no such file" in failures[0]
    assert "--config_file configs/accelerate/no_such.yaml: no such file" in failures[1]


def test_an_unknown_flag_fails(tmp_path):
    results = _check(tmp_path, BLOCK.format(
        "python train/evaluate.py --model DIR --manifest A.jsonl --out r.json --no-such-flag\n"
        "accelerate launch --no-such-launcher-option train/distill.py\n"
        "python train/evaluate.py --model DIR --manifest A.jsonl --out r.json --hyps"))
    failures = _failures(results)
    assert len(failures) == 2, failures
    assert "train/evaluate.py has no option --no-such-flag" in failures[0]
    assert "accelerate: unknown option --no-such-launcher-option" in failures[1]


def test_an_unknown_config_key_in_an_override_fails(tmp_path):
    results = _check(tmp_path, BLOCK.format(
        "python train/distill.py --config configs/distill/toy.yaml opd.kk=16\n"
        "python train/sft.py --config MY.yaml optim.no_such_key=1\n"  # a placeholder config: checked on a stand-in
        "python train/sft.py --config MY.yaml optim.lr=1e-4 'data.train=[{path: pseudo.jsonl}]'\n"
        "python train/distill.py --config configs/distill/toy.yaml teacher.score_chunk_rows=2") +
        "A key in prose: `optim.logits_chunk`, `optim.no_such_key=3`.\n")
    failures = _failures(results)
    assert len(failures) == 4, failures
    assert "opd.kk" in failures[0] and "Did you mean" in failures[0]
    assert "optim.no_such_key" in failures[1]
    assert "renamed to teacher.rows_per_forward" in failures[2]
    assert "config key `optim.no_such_key`" in failures[3]


def test_a_broken_link_fails(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A real heading\n")
    results = _check(tmp_path, "[ok](other.md#a-real-heading) [no file](gone.md) [no heading](other.md#gone)\n"
                               "[code](../x.py) [web](https://example.com) [here](#title)\n\n# Title\n")
    failures = _failures(results)
    assert len(failures) == 3, failures
    assert "gone.md: no such file" in failures[0]
    assert "no heading #gone" in failures[1]
    assert "../x.py: no such file" in failures[2]


def test_a_missing_make_target_or_script_fails(tmp_path):
    results = _check(tmp_path, BLOCK.format("make no-such-target\nmake demo\nbash scripts/no_such.sh\n"
                                            "bash scripts/bench_gpu.sh --no-such-flag") +
                     "Then `python scripts/gone.py --out DIR`, `python -m train.no_such_module` and `configs/toy/gone.yaml`.\n")
    failures = _failures(results)
    assert len(failures) == 6, failures
    assert "make no-such-target" in failures[0]
    assert "scripts/no_such.sh: no such file" in failures[1]
    assert "does not know --no-such-flag" in failures[2]
    assert "scripts/gone.py: no such file" in failures[3]
    assert "train.no_such_module: no such module" in failures[4]
    assert "configs/toy/gone.yaml: no such file" in failures[5]


def test_a_failing_python_block_fails_unless_skipped_with_a_reason(tmp_path):
    results = _check(tmp_path, "```python\nimport sys\nsys.exit('boom')\n```\n\n"
                               "<!-- check_docs: skip (needs a GPU) -->\n```python\nraise SystemExit(1)\n```\n\n"
                               "<!-- check_docs: skip -->\n```python\nraise SystemExit(1)\n```\n\n"
                               "```python\nprint('fine')\n```\n")
    failures = _failures(results)
    assert len(failures) == 2, failures
    assert "page.md:2" in failures[0] and "boom" in failures[0]
    assert "a skip needs a reason" in failures[1]
    assert [r.reason for r in results if r.status == "SKIP"] == ["needs a GPU"]


def test_a_run_block_runs(tmp_path):
    results = _check(tmp_path, "<!-- check_docs: run -->\n" + BLOCK.format("test -f Makefile") +
                     "\n<!-- check_docs: run -->\n" + BLOCK.format("test -f no_such_file"))
    assert [r.status for r in results if r.what.startswith("ran:")] == ["OK", "FAIL"]


@pytest.mark.parametrize("path, checked", [
    ("configs/MY.yaml", False), ("data/my_domain/dev.jsonl", False), ("runs/x/final", False), ("/data/calls", False),
    ("checkpoints/ARK-ASR-3B", False), ("pseudo.jsonl", False), ("DIR", False), ("data_recipes/<corpus>/", False),
    ("checkpoints/toy/teacher/MADE_BY.json", True), ("configs/toy/gone.yaml", True), ("docs/README.md", True),
])
def test_which_paths_are_checked(path, checked):
    problem = check_docs.check_path(path, ROOT)
    exists = (ROOT / path).exists()
    assert (problem is not None) == (checked and not exists)
