"""Check every command, Python block and link in README.md and docs/*.md, cheaply, so none of them rots.

    python scripts/check_docs.py                      # README.md and docs/*.md; exit 1 on any failure
    python scripts/check_docs.py docs/training.md -v  # some pages; -v also lists each link

`make test` runs it (tests/test_docs.py). It prints one line per command: file:line, OK / FAIL / SKIP.

Commands are the lines of ```bash / ```sh blocks (a trailing backslash continues a line, `#` starts a
comment, `&&`, `;` and `|` separate commands) and inline `code` that starts with python, accelerate,
torchrun, make or bash (inline, `accelerate launch --cpu` with no script is a fragment: its options are
checked, the missing script is not). Leading VAR=value assignments are read as paths (below), then:

  python X.py ... | python -m M ... | accelerate launch [opts] X.py ... | torchrun [opts] X.py ...
      X (or M) exists; every --flag is one that X's own argument parser knows (X runs with --help
      once, all entry points one after another in one subprocess that records each argparse parser
      built; one that fails there is rerun alone as `python X --help`, its help text searched for the
      flag; results are cached per process); accelerate's and torchrun's own
      options are checked against their parsers. For train/distill.py and train/sft.py, --config FILE
      and the key=value overrides are loaded with train.config.load_config (unknown or renamed keys,
      bad values and missing config files fail); a placeholder FILE (below) is replaced by the entry
      point's stand-in config (CONFIG_ENTRIES: configs/distill/toy.yaml, configs/sft/toy.yaml) so that
      the overrides are still checked.
  accelerate launch --config_file F: F exists and parses as YAML.
  make T: `make -n T` succeeds.    bash S.sh: S exists, `bash -n S` passes, each --flag occurs in S.
  Anything else (pip, cd, git, a python -m of an installed module): SKIP, named as external.

Paths. An argument, a --flag=value or key=value value, or a VAR=value value that looks like a path
(holds a `/` or ends in a file extension) is checked only if it lies in what the repository tracks
(CHECKED_ROOTS: configs/, scripts/, train/, data_recipes/, tests/, docs/, checkpoints/toy/ and the
top-level files) and holds no placeholder; then it must exist ({a,b} braces expanded, * globs must
match). Everything else is what an earlier step makes or what you bring (data/, runs/, a downloaded
checkpoints/NAME, /data/..., pseudo.jsonl) and is not checked; so is a missing file named in prose under
OUTPUT_DIRS (scripts/results/: what a benchmark writes when it runs). A placeholder is a path component in
capitals (DIR, CONFIG, MY.yaml, A.jsonl, I/N; README and MADE_BY are real names), <angle> brackets,
a $VARIABLE, or `...`.

Blocks. ```python blocks run (a subprocess, cwd = the repository root) unless the line before the
fence is `<!-- check_docs: skip (reason) -->`; a ```bash block after `<!-- check_docs: run -->` is
run for real with bash -e (keep those to a cheap command or two). ```yaml blocks must parse.

Prose. Relative links must resolve (files, and #anchors to headings, GitHub's slugs); inline `code`
that is a path in a tracked folder must exist; inline `code` that names a config key
(`optim.logits_chunk`, `lora.enabled=true`) must be a key of the run or model config schemas.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import glob
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED_ROOTS = ("configs", "scripts", "train", "data_recipes", "tests", "docs", "checkpoints/toy",
                 "Makefile", "README.md", "pyproject.toml", "constraints.txt")
REAL_UPPER_NAMES = {"README", "MADE_BY", "LICENSE", "CHANGELOG"}
OUTPUT_DIRS = ("scripts/results/",)  # what benchmarks write: named in prose before a run has made it
COMMAND_WORDS = ("python", "python3", "accelerate", "torchrun", "make", "bash")
CONFIG_ENTRIES = {"train/distill.py": ("DistillConfig", "configs/distill/toy.yaml"),
                  "train/sft.py": ("SFTConfig", "configs/sft/toy.yaml")}
PATH_SUFFIXES = (".py", ".yaml", ".yml", ".sh", ".json", ".jsonl", ".md", ".txt", ".toml", ".wav", ".flac")
EXTERNAL_LAUNCHERS = {"accelerate": "accelerate.commands.launch:launch_command_parser",
                      "torchrun": "torch.distributed.run:get_args_parser"}
BLOCK_TIMEOUT_S = 300


@dataclass
class Command:
    file: Path
    line: int
    text: str
    inline: bool = False  # `code` in prose: may be a fragment (`accelerate launch --cpu`), not a whole command


@dataclass
class Block:
    file: Path
    line: int
    lang: str
    text: str
    directive: str = ""  # "run", "skip (reason)" or ""


@dataclass
class Page:
    file: Path
    commands: list[Command] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    spans: list[tuple[int, str]] = field(default_factory=list)  # inline code outside commands
    links: list[tuple[int, str]] = field(default_factory=list)
    anchors: set[str] = field(default_factory=set)


@dataclass
class Result:
    where: str
    status: str  # OK | FAIL | SKIP
    what: str
    reason: str = ""

    def __str__(self):
        what = re.sub(r"\s+#.*$", "", self.what)  # a command's comment
        return f"{self.where}: {self.status} {what}" + (f"  -- {self.reason}" if self.reason else "")


# ---------------------------------------------------------------- reading markdown

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
DIRECTIVE = re.compile(r"<!--\s*check_docs:\s*(run|skip\b[^>]*?)\s*-->")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)")
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def read_page(path: Path) -> Page:
    page = Page(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    prose = []  # the page with code blocks blanked, for inline code and links
    seen: dict[str, int] = {}
    fence, block, previous = None, None, ""
    for number, line in enumerate(lines, 1):
        if fence is None:
            opened = FENCE.match(line)
            if opened:
                directive = DIRECTIVE.search(previous)
                fence = opened.group(2)
                block = Block(path, number + 1, opened.group(3).lower(), "", directive.group(1) if directive else "")
                prose.append("")
            else:
                prose.append(line)
                heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
                if heading:
                    base = slug(heading.group(1))
                    count = seen.get(base, 0)
                    seen[base] = count + 1
                    page.anchors.add(base if count == 0 else f"{base}-{count}")
            if line.strip():
                previous = line
            continue
        if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            page.blocks.append(block)
            fence, block, previous = None, None, ""
        else:
            block.text += line + "\n"
        prose.append("")
    text = "\n".join(prose)
    line_of = lambda offset: text.count("\n", 0, offset) + 1
    without_code = text
    for match in INLINE_CODE.finditer(text):
        span = " ".join(match.group(1).split())
        words = _strip_assignments(span.split())
        if words and words[0] in COMMAND_WORDS and len(words) > (2 if words[0] == "accelerate" else 1):
            page.commands.append(Command(path, line_of(match.start()), span, inline=True))
        else:
            page.spans.append((line_of(match.start()), span))
        without_code = without_code[:match.start()] + " " * (match.end() - match.start()) + without_code[match.end():]
    for match in LINK.finditer(without_code):
        page.links.append((line_of(match.start()), match.group(2)))
    for block in page.blocks:
        if block.lang in ("bash", "sh", "shell", "console"):
            page.commands.extend(_block_commands(block))
    page.commands.sort(key=lambda c: c.line)
    return page


def _block_commands(block: Block) -> list[Command]:
    commands, pending, start = [], "", 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        try:
            words = shlex.split(text, comments=True)
        except ValueError:
            words = text.split()
        if words:
            commands.append(Command(block.file, start, text))
    return commands


def _strip_assignments(words: list[str]) -> list[str]:
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    return words


# ---------------------------------------------------------------- paths and placeholders


def is_placeholder(part: str) -> bool:
    stem = part.split(".", 1)[0]
    return (bool(re.fullmatch(r"[A-Z][A-Z0-9_-]*", stem)) and stem not in REAL_UPPER_NAMES) or any(
        c in part for c in "<>$") or part in ("...", "…")


def looks_like_path(token: str) -> bool:
    if not token or token.startswith(("-", "hf:")) or "://" in token:
        return False
    return "/" in token or token.endswith(PATH_SUFFIXES)


def expand_braces(token: str) -> list[str]:
    match = re.search(r"\{([^{}]*,[^{}]*)\}", token)
    if not match:
        return [token]
    return [x for option in match.group(1).split(",")
            for x in expand_braces(token[:match.start()] + option + token[match.end():])]


def check_path(token: str, root: Path) -> str | None:
    """None if fine or not ours to check; else why it fails."""
    token = token.strip("'\"[](),;")
    token = token.removeprefix("./")
    token = token.split("#", 1)[0]  # dataset[#split]
    if not looks_like_path(token) or token.startswith(("/", "~")):
        return None
    if any(is_placeholder(part) for part in token.split("/")):
        return None
    if not any(token == r or token.startswith(r + "/") for r in CHECKED_ROOTS):
        return None
    for option in expand_braces(token):
        if any(c in option for c in "*?"):
            if not glob.glob(str(root / option)):
                return f"{option}: nothing matches"
        elif not (root / option).exists():
            return f"{option}: no such file or directory"
    return None


# ---------------------------------------------------------------- entry points and their parsers


def _help_worker(entries: list[str]) -> None:
    """Subprocess mode: for each entry ("path:X.py", "module:M", "launcher:accelerate"), read the
    argument parser it builds when run with --help. Prints one JSON object."""
    import contextlib
    import io
    import runpy

    sys.path.insert(0, str(ROOT))
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def spy(self, args=None, namespace=None):
        seen.append(self)
        return original(self, args, namespace)

    argparse.ArgumentParser.parse_known_args = spy
    out = {}
    for entry in entries:
        kind, _, name = entry.partition(":")
        seen.clear()
        buffer = io.StringIO()
        argv, path = list(sys.argv), list(sys.path)
        status = "ok"
        try:
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                if kind == "launcher":
                    module, _, function = EXTERNAL_LAUNCHERS[name].partition(":")
                    seen.append(getattr(__import__(module, fromlist=[function]), function)())
                elif kind == "module":
                    sys.argv = [name, "--help"]
                    runpy.run_module(name, run_name="__main__", alter_sys=True)
                else:
                    sys.argv = [name, "--help"]
                    sys.path.insert(0, str(Path(name).parent))
                    runpy.run_path(name, run_name="__main__")
        except SystemExit as stop:
            status = "ok" if stop.code in (0, None) else f"exit {stop.code}"
        except BaseException as err:  # noqa: BLE001 - reported, and retried alone by the caller
            status = f"{type(err).__name__}: {err}"
        finally:
            sys.argv, sys.path[:] = argv, path
        options = {opt: action.nargs != 0 for parser in seen for action in parser._actions
                   for opt in action.option_strings}
        out[entry] = {"status": status, "options": options, "help": buffer.getvalue()[-20000:],
                      "parsed": bool(seen)}
    print("\n@@check_docs@@" + json.dumps(out))


_HELP_CACHE: dict[tuple[Path, str], dict] = {}  # per process: tests check several pages against one repository


def _run_help(entries: list[str], root: Path) -> dict:
    cached = {e: _HELP_CACHE[(root, e)] for e in entries if (root, e) in _HELP_CACHE}
    found = _read_parsers([e for e in entries if e not in cached], root)
    _HELP_CACHE.update({(root, e): info for e, info in found.items()})
    return {**cached, **found}


def _read_parsers(entries: list[str], root: Path) -> dict:
    if not entries:
        return {}
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--help-worker", *entries],
                          cwd=root, env=env, check=False, capture_output=True, text=True, timeout=600)
    found = {}
    if "@@check_docs@@" in proc.stdout:
        found = json.loads(proc.stdout.rsplit("@@check_docs@@", 1)[1])
    for entry in entries:  # a script that did not survive running beside the others: alone, as `python X --help`
        result = found.get(entry)
        if result and (result["parsed"] or result["status"] == "ok"):
            continue
        kind, _, name = entry.partition(":")
        if kind == "launcher":
            found[entry] = result or {"status": "no result", "options": {}, "help": proc.stderr[-2000:], "parsed": False}
            continue
        argv = [sys.executable, "-m", name, "--help"] if kind == "module" else [sys.executable, name, "--help"]
        alone = subprocess.run(argv, cwd=root, env=env, check=False, capture_output=True, text=True, timeout=300)
        found[entry] = {"status": "ok" if alone.returncode == 0 else f"exit {alone.returncode}",
                        "options": {}, "help": alone.stdout + alone.stderr, "parsed": False}
    return found


def _repo_module_file(module: str, root: Path) -> Path | None:
    base = root / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_repo_module(module: str, root: Path) -> bool:
    return (root / module.split(".")[0]).is_dir()


@dataclass
class Parsed:
    """A command, taken apart: what runs it and with which arguments."""

    kind: str  # python | accelerate | torchrun | make | bash | external
    entry: str = ""  # "path:train/distill.py" | "module:train.data.inspect"
    args: list[str] = field(default_factory=list)
    launcher_args: list[str] = field(default_factory=list)
    assignments: list[str] = field(default_factory=list)
    note: str = ""


def _split_simple(text: str) -> list[list[str]]:
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        words = text.split()
    groups, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "|"):
            groups.append(current)
            current = []
        else:
            current.append(word)
    groups.append(current)
    return [g for g in groups if g]


def _launcher_split(words: list[str], options: dict[str, bool]) -> tuple[list[str], list[str], str | None, bool]:
    """(launcher options, the rest, an unknown option, module mode) for accelerate launch / torchrun."""
    i, module = 0, False
    while i < len(words) and words[i].startswith("-"):
        name = words[i].split("=", 1)[0]
        if name not in options:
            return words[:i], words[i:], name, module
        module = module or name in ("-m", "--module")
        i += 1 if ("=" in words[i] or not options[name]) else 2
    return words[:i], words[i:], None, module


def parse(words: list[str], helps: dict) -> Parsed:
    plain = []
    for word in words:  # `[--layout hf|ark]`: an optional part, checked like the rest
        if word.startswith("[-"):
            word = word[1:]
        if word.endswith("]") and "[" not in word:
            word = word[:-1]
        if word and word not in ("...", "…", "[", "]"):
            plain.append(word)
    assignments = [w for w in itertools.takewhile(lambda w: re.match(r"^[A-Za-z_]\w*=", w), plain)]
    plain = plain[len(assignments):]
    if not plain:
        return Parsed("external", note="nothing to run")
    head, rest = plain[0], plain[1:]
    if head in ("python", "python3") or head.endswith("/python"):
        if rest[:1] == ["-m"] and len(rest) > 1:
            return Parsed("python", f"module:{rest[1]}", rest[2:], assignments=assignments)
        if rest and not rest[0].startswith("-"):
            return Parsed("python", f"path:{rest[0]}", rest[1:], assignments=assignments)
        return Parsed("external", note="python without a script")
    if head in EXTERNAL_LAUNCHERS:
        if head == "accelerate":
            if rest[:1] != ["launch"]:
                return Parsed("external", note=f"accelerate {rest[0] if rest else ''}".strip())
            rest = rest[1:]
        options = helps.get(f"launcher:{head}", {}).get("options", {})
        launcher, tail, unknown, module = _launcher_split(rest, options)
        if unknown:
            return Parsed(head, launcher_args=launcher, note=f"{head}: unknown option {unknown}")
        if not tail:
            return Parsed(head, launcher_args=launcher, note=f"{head}: no script")
        entry = f"module:{tail[0]}" if module else f"path:{tail[0]}"
        return Parsed(head, entry, tail[1:], launcher_args=launcher, assignments=assignments)
    if head in ("make", "bash", "sh"):
        return Parsed("make" if head == "make" else "bash", args=rest, assignments=assignments)
    return Parsed("external", note=f"external command: {head}")


def _entries_needed(commands: list[Command], root: Path) -> list[str]:
    """Entry points whose parsers are needed, and the launchers'. A launcher's script is found here as
    its first *.py argument (or what follows -m), before its own parser is known."""
    needed = set()
    for command in commands:
        for words in _split_simple(command.text):
            words = _strip_assignments(words)
            if words and words[0] in EXTERNAL_LAUNCHERS:
                needed.add(f"launcher:{words[0]}")
                script = next((w for w in words if w.endswith(".py")), None)
                module = next((b for a, b in itertools.pairwise(words) if a in ("-m", "--module")), None)
                words = ["python", script] if script else ["python", "-m", module] if module else []
            parsed = parse(words, {}) if words else Parsed("external")
            if parsed.entry:
                kind, _, name = parsed.entry.partition(":")
                if kind == "path" and (root / name).is_file() and not any(is_placeholder(p) for p in name.split("/")):
                    needed.add(parsed.entry)
                if kind == "module" and _is_repo_module(name, root) and _repo_module_file(name, root):
                    needed.add(parsed.entry)
    return sorted(needed)


# ---------------------------------------------------------------- checking one command


def _timed(function, *args):
    start = time.monotonic()
    return function(*args), time.monotonic() - start


def _config_schema(name: str):
    from train import config

    return getattr(config, name)


def check_command(command: Command, helps: dict, root: Path) -> Result:
    where = f"{command.file.relative_to(root) if command.file.is_relative_to(root) else command.file}:{command.line}"
    problems, notes = [], []
    for words in _split_simple(command.text):
        parsed = parse(words, helps)
        for assignment in parsed.assignments:
            problem = check_path(assignment.split("=", 1)[1], root)
            if problem:
                problems.append(problem)
        if parsed.kind == "external":
            notes.append(parsed.note)
            continue
        if parsed.note:
            if not (command.inline and parsed.note.endswith("no script")):
                problems.append(parsed.note)
                continue
            notes.append("a fragment: no script")
        if parsed.kind in EXTERNAL_LAUNCHERS and not parsed.entry:
            problems.extend(_check_launcher_args(parsed, root))
            continue
        if parsed.kind == "make":
            problems.extend(_check_make(parsed.args, root))
        elif parsed.kind == "bash":
            problems.extend(_check_bash(parsed.args, root))
        else:
            problems.extend(_check_launcher_args(parsed, root))
            problems.extend(_check_entry(parsed, helps, root))
    if problems:
        return Result(where, "FAIL", command.text, "; ".join(problems))
    if notes and len(notes) == len(_split_simple(command.text)):
        status = "OK" if all(n.startswith("a fragment") for n in notes) else "SKIP"
        return Result(where, status, command.text, "; ".join(notes))
    return Result(where, "OK", command.text)


def _check_make(args: list[str], root: Path) -> list[str]:
    targets = [a for a in args if not a.startswith("-") and "=" not in a]
    return [problem for target in targets for problem in [_make_target(target, root)] if problem]


@functools.cache
def _make_target(target: str, root: Path) -> str | None:
    proc = subprocess.run(["make", "-n", target], cwd=root, check=False, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return f"make {target}: " + (proc.stderr.strip().splitlines() or ["fails"])[-1]
    return None


def _check_bash(args: list[str], root: Path) -> list[str]:
    if not args:
        return ["bash without a script"]
    script = args[0]
    if any(is_placeholder(p) for p in script.split("/")):
        return []
    path = root / script
    if not path.is_file():
        return [f"{script}: no such file"]
    problems = []
    syntax = subprocess.run(["bash", "-n", str(path)], check=False, capture_output=True, text=True)
    if syntax.returncode != 0:
        problems.append(f"bash -n {script}: {syntax.stderr.strip()}")
    text = path.read_text(encoding="utf-8")
    for arg in args[1:]:
        if arg.startswith("--") and arg.split("=", 1)[0] not in text:
            problems.append(f"{script} does not know {arg.split('=', 1)[0]}")
        else:
            problem = check_path(arg.split("=", 1)[-1], root)
            if problem:
                problems.append(problem)
    return problems


def _check_launcher_args(parsed: Parsed, root: Path) -> list[str]:
    problems = []
    words = parsed.launcher_args
    for i, word in enumerate(words):
        name, _, value = word.partition("=")
        if name in ("--config_file", "--config-file"):
            value = value or (words[i + 1] if i + 1 < len(words) else "")
            if is_placeholder(value.split("/")[-1]):
                continue
            path = root / value
            if not path.is_file():
                problems.append(f"--config_file {value}: no such file")
                continue
            import yaml

            try:
                yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as err:
                problems.append(f"--config_file {value}: not YAML ({err})")
        elif not word.startswith("-"):
            problem = check_path(word, root)
            if problem:
                problems.append(problem)
    return problems


def _check_entry(parsed: Parsed, helps: dict, root: Path) -> list[str]:
    kind, _, name = parsed.entry.partition(":")
    problems = []
    if kind == "path":
        if any(is_placeholder(p) for p in name.split("/")):
            return []
        if not (root / name).is_file():
            return [f"{name}: no such file"]
    elif _is_repo_module(name, root):
        if not _repo_module_file(name, root):
            return [f"python -m {name}: no such module in the repository"]
    else:
        if importlib.util.find_spec(name.split(".")[0]) is None:
            return [f"python -m {name}: not installed"]
        return []  # an installed tool's own flags are its business
    info = helps.get(parsed.entry)
    if info is None:
        return [f"{name}: its --help was not read"]
    if not info["parsed"] and info["status"] != "ok":
        return [f"{name} --help fails ({info['status']}): {info['help'].strip()[-300:]}"]
    args = parsed.args
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and len(arg) > 2:
            flag, has_value, value = arg.partition("=")
            known = flag in info["options"] if info["parsed"] else flag in info["help"]
            if not known:
                problems.append(f"{name} has no option {flag}")
            elif has_value:
                problem = check_path(value, root)
                if problem:
                    problems.append(problem)
        else:
            value = arg.split("=", 1)[1] if re.match(r"^[\w.\[\]]+=", arg) else arg
            problem = check_path(value, root)
            if problem:
                problems.append(problem)
        i += 1
    if kind == "path" and name in CONFIG_ENTRIES:
        problems.extend(_check_run_config(name, args, root))
    return problems


def _check_run_config(entry: str, args: list[str], root: Path) -> list[str]:
    from train.config import ConfigError, load_config

    schema_name, stand_in = CONFIG_ENTRIES[entry]
    config, overrides, i = None, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            config, i = args[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif not arg.startswith("-"):
            overrides.append(arg)
        i += 1
    if config is None and entry != "train/distill.py":
        return [f"{entry} needs --config"]
    if config is None or any(is_placeholder(p) for p in config.split("/")):
        config = stand_in  # train/distill.py's default; or the stand-in under a placeholder's overrides
    cwd = os.getcwd()
    try:
        os.chdir(root)  # configs name other files relative to the repository root
        load_config(_config_schema(schema_name), config, overrides)
    except ConfigError as err:
        return [f"config: {err}"]
    except Exception as err:  # noqa: BLE001 - any error here is a doc that does not load
        return [f"config: {type(err).__name__}: {err}"]
    finally:
        os.chdir(cwd)
    return []


# ---------------------------------------------------------------- blocks, links, prose


def run_block(block: Block, root: Path) -> Result:
    where = f"{_rel(block.file, root)}:{block.line}"
    first = next((ln for ln in block.text.splitlines() if ln.strip() and not ln.startswith("#")), "").strip()
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    if block.lang == "python":
        argv = [sys.executable, "-c", block.text]
        what = f"python block ({first[:60]}...)"
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.text]
        what = f"ran: {' / '.join(ln.split('#')[0].strip() for ln in block.text.splitlines() if ln.strip())}"
    try:
        proc = subprocess.run(argv, cwd=root, env=env, check=False, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Result(where, "FAIL", what, f"timed out after {BLOCK_TIMEOUT_S} s")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        return Result(where, "FAIL", what, f"exit {proc.returncode}: " + " | ".join(tail))
    return Result(where, "OK", what)


def check_links(page: Page, pages: dict[Path, Page], root: Path) -> list[Result]:
    results = []
    for line, target in page.links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        where = f"{_rel(page.file, root)}:{line}"
        path_part, _, anchor = target.partition("#")
        path = (page.file.parent / path_part).resolve() if path_part else page.file.resolve()
        if not path.exists():
            results.append(Result(where, "FAIL", f"link {target}", f"{path_part}: no such file"))
            continue
        if anchor:
            if path.suffix != ".md":
                continue
            target_page = pages.get(path) or read_page(path)
            if anchor not in target_page.anchors:
                results.append(Result(where, "FAIL", f"link {target}", f"no heading #{anchor} in {_rel(path, root)}"))
                continue
        results.append(Result(where, "OK", f"link {target}"))
    return results


def _config_sections() -> dict[str, list]:
    from train.config import DistillConfig, ModelConfig, SFTConfig

    return {"run": [DistillConfig, SFTConfig], "model": [ModelConfig]}


def key_exists(key: str) -> bool:
    from train.config import RENAMED_KEYS

    if key in RENAMED_KEYS:
        return True
    for schemas in _config_sections().values():
        for schema in schemas:
            current, ok = schema, True
            for part in key.split("."):
                if not dataclasses.is_dataclass(current):
                    ok = typing.get_origin(current) in (list, dict)  # data.train[...]: below a list
                    break
                hints = typing.get_type_hints(current)
                if part not in hints:
                    ok = False
                    break
                current = hints[part]
                if typing.get_origin(current) is typing.Union:  # Optional[X]
                    current = next(a for a in typing.get_args(current) if a is not type(None))
            if ok:
                return True
    return False


def _section_names() -> set[str]:
    names = set()
    for schemas in _config_sections().values():
        for schema in schemas:
            names |= {f.name for f in dataclasses.fields(schema) if dataclasses.is_dataclass(
                typing.get_type_hints(schema)[f.name])}
    return names


def check_spans(page: Page, root: Path) -> list[Result]:
    sections = _section_names()
    failures, checked = [], 0
    for line, span in page.spans:
        where = f"{_rel(page.file, root)}:{line}"
        tokens = span.split()
        if len(tokens) == 1 and looks_like_path(tokens[0]):
            checked += 1
            problem = check_path(tokens[0], root)
            if problem and not tokens[0].startswith(OUTPUT_DIRS):
                failures.append(Result(where, "FAIL", f"path `{span}`", problem))
            continue
        for token in tokens:
            key = token.split("=", 1)[0]
            if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key) and key.split(".")[0] in sections:
                checked += 1
                if not key_exists(key):
                    failures.append(Result(where, "FAIL", f"config key `{key}`", "no such key in the config schemas"))
    return failures + [Result(_rel(page.file, root), "OK", f"{checked} paths and config keys in prose")]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- all together


def check(files: list[Path], root: Path = ROOT, verbose: bool = False, out=print) -> list[Result]:
    """Check `files` (markdown), resolving commands against `root`; returns every result, prints each."""
    root = root.resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    pages = {f.resolve(): read_page(f) for f in files}
    commands = [c for p in pages.values() for c in p.commands]
    blocks = [b for p in pages.values() for b in p.blocks
              if (b.lang == "python" and not b.directive.startswith("skip")) or (
                  b.lang in ("bash", "sh") and b.directive == "run")]
    results: list[Result] = []
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        ran = [pool.submit(_timed, run_block, b, root) for b in blocks]
        entries = _entries_needed(commands, root)
        helps, help_s = _timed(_run_help, entries, root)
        for page in pages.values():
            for command in page.commands:
                results.append(check_command(command, helps, root))
            for block in page.blocks:
                where = f"{_rel(block.file, root)}:{block.line}"
                if block.lang == "python" and block.directive.startswith("skip"):
                    reason = block.directive[4:].strip(" ()")
                    if not reason:
                        results.append(Result(where, "FAIL", "python block", "a skip needs a reason: skip (why)"))
                    else:
                        results.append(Result(where, "SKIP", "python block", reason))
                elif block.lang in ("yaml", "yml"):
                    import yaml

                    try:
                        yaml.safe_load(block.text)
                        results.append(Result(where, "OK", "yaml block parses"))
                    except yaml.YAMLError as err:
                        results.append(Result(where, "FAIL", "yaml block", str(err).splitlines()[0]))
            results.extend(check_links(page, pages, root))
            results.extend(check_spans(page, root))
        block_s = []
        for future in ran:
            result, seconds = future.result()
            results.append(result)
            block_s.append(seconds)
    order = {_rel(f.resolve(), root): i for i, f in enumerate(files)}
    results.sort(key=lambda r: (order.get(r.where.split(":")[0], len(order)),
                                int(r.where.split(":")[1]) if ":" in r.where else 10 ** 9))
    for result in results:
        if verbose or result.status == "FAIL" or not result.what.startswith("link "):
            out(str(result))
    failed = [r for r in results if r.status == "FAIL"]
    links = sum(1 for r in results if r.what.startswith("link ") and r.status == "OK")
    out(f"{len(results)} checks ({links} links) in {len(files)} files: {len(failed)} failed; "
        f"{time.monotonic() - started:.0f} s ({len(entries)} entry points' parsers {help_s:.0f} s, "
        f"{len(blocks)} blocks run {max(block_s, default=0):.0f} s, side by side)")
    return results


def default_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print each link checked")
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--help-worker"]:
        _help_worker(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    results = check(args.files or default_files(), ROOT, args.verbose)
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
