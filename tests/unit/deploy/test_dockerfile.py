"""The Dockerfile's reproducibility properties, proved by parsing it (no container engine here).

Every FROM is pinned by digest, dependencies are installed only from the hashed locks, the
runtime stage holds no pip/setuptools/wheel, and the OCI labels are set.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
REQUIRED_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    "org.opencontainers.image.base.name",
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, `\\` continuations joined."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the file ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by stage; index 0 holds the global ARGs before the first FROM."""
    out: list[list[Instruction]] = [[]]
    for ins in instructions:
        if ins.keyword == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    found = {}
    for ins in stages(instructions)[0]:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            found[name] = default
    return found


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)


def from_images(instructions: list[Instruction]) -> list[str]:
    args = global_args(instructions)
    images = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            images.append(resolve(words[0], args))
    return images


def labels(stage: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "LABEL":
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                found[key] = value
    return found


def pip_installs(instructions: list[Instruction]) -> list[str]:
    """Each `pip install ...` command inside the RUN instructions."""
    commands = []
    for ins in instructions:
        if ins.keyword == "RUN":
            for part in re.split(r"&&|;", ins.args):
                if re.search(r"\bpip install\b", part):
                    commands.append(" ".join(part.split()))
    return commands


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


# --- the parser itself: the properties below are only as good as it is -------------------------


def test_parser_joins_continuations_and_resolves_args() -> None:
    text = (
        "ARG BASE=python:3.11-slim@sha256:" + "a" * 64 + "\n"
        "FROM ${BASE} AS b\n# comment\nRUN pip install \\\n  --require-hashes -r x.lock\n"
        'FROM python:3.11-slim\nLABEL a="1" \\\n      b="two words"\n'
    )
    parsed = parse(text)
    assert [i.keyword for i in parsed] == ["ARG", "FROM", "RUN", "FROM", "LABEL"]
    assert from_images(parsed) == ["python:3.11-slim@sha256:" + "a" * 64, "python:3.11-slim"]
    assert pip_installs(parsed) == ["pip install --require-hashes -r x.lock"]
    assert labels(stages(parsed)[-1]) == {"a": "1", "b": "two words"}
    # The unpinned second FROM is what the digest test must catch.
    assert not all(DIGEST.search(image) for image in from_images(parsed))


# --- the properties ------------------------------------------------------------------------------


def test_every_base_image_is_pinned_by_digest(instructions: list[Instruction]) -> None:
    images = from_images(instructions)
    assert len(images) >= 2, "expected a builder and a runtime stage"
    for image in images:
        assert DIGEST.search(image), f"FROM {image} is not pinned by @sha256 digest"


def test_the_digest_comment_says_how_to_verify_and_bump() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "docker buildx imagetools inspect" in text
    assert "verify" in text.lower()


def test_dependencies_come_only_from_the_hashed_locks(instructions: list[Instruction]) -> None:
    installs = pip_installs(instructions)
    assert installs
    from_lock = [c for c in installs if " -r " in f" {c} "]
    assert {re.search(r"-r\s+(\S+)", c).group(1) for c in from_lock} == {  # type: ignore[union-attr]
        "requirements.lock",
        "requirements-build.lock",
    }
    for command in from_lock:
        assert "--require-hashes" in command, command
        assert "--only-binary=:all:" in command, command
    # Anything else installs only the project's own wheel, without resolving dependencies.
    for command in set(installs) - set(from_lock):
        assert "--no-deps" in command and "--no-index" in command, command
    for ins in instructions:
        if ins.keyword == "RUN" and "pip wheel" in ins.args:
            assert "--no-deps" in ins.args and "--no-build-isolation" in ins.args, ins.args
    copied = " ".join(i.args for i in instructions if i.keyword == "COPY")
    assert "requirements.lock" in copied and "requirements-build.lock" in copied


def test_the_build_context_lets_the_locks_in() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!requirements.lock" in ignore and "!requirements-build.lock" in ignore


def test_runtime_stage_has_no_installer(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    runs = " ".join(i.args for i in runtime if i.keyword == "RUN")
    removed = re.search(r"pip uninstall --yes ([\w ]+)", runs)
    assert removed, "the runtime stage must uninstall the base image's pip"
    assert {"pip", "setuptools", "wheel"} <= set(removed.group(1).split())
    assert 'import pip"' in runs, "the stage must prove pip is gone"
    assert not pip_installs(runtime), "nothing is pip-installed in the runtime stage"
    # Everything installed reaches the runtime stage from the builder, not from an index.
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert copies == ["--from=builder /install /usr/local"]


def test_runtime_stage_has_the_oci_labels(instructions: list[Instruction]) -> None:
    found = labels(stages(instructions)[-1])
    missing = REQUIRED_LABELS - set(found)
    assert not missing, f"missing labels: {sorted(missing)}"
    assert all(found[k] for k in REQUIRED_LABELS)


def test_runtime_runs_as_the_charts_user(instructions: list[Instruction]) -> None:
    runtime = stages(instructions)[-1]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users == ["10001:10001"]
    cmd = next(i.args for i in runtime if i.keyword == "CMD")
    assert "/etc/profile-consumer/config.yaml" in cmd
