"""requirements.lock is the runtime closure of pyproject.toml, hashed; no network needed.

Every `[project] dependencies` name (and the extras it asks for) is pinned with `==`, the pin
satisfies the pyproject range, every pinned package carries sha256 hashes, and nothing from the
`[dev]` extra slipped in. requirements-build.lock holds the build backend the same way.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# The image's interpreter: markers are judged against it.
IMAGE_ENV = {"python_version": "3.11", "python_full_version": "3.11.9", "sys_platform": "linux"}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: Version
    marker: Marker | None
    hashes: int


def parse_lock(text: str) -> dict[NormalizedName, Pin]:
    """pip's hashed requirements format: `name==version [; marker] \\` then `--hash=` lines."""
    pins: dict[NormalizedName, Pin] = {}
    entries = re.split(r"\n(?=\S)", text)
    for entry in entries:
        head = entry.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        req = Requirement(head)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not pinned with ==: {head}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} pinned twice"
        pins[name] = Pin(name, Version(specs[0].version), req.marker, len(HASH.findall(entry)))
    return pins


def applies(pin: Pin) -> bool:
    return pin.marker is None or pin.marker.evaluate(IMAGE_ENV)


def check_covers(requirements: list[str], pins: dict[NormalizedName, Pin]) -> list[str]:
    """Problems with `pins` as a lock of `requirements` (empty: fine)."""
    problems = []
    for line in requirements:
        req = Requirement(line)
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is not in the lock")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req.name}=={pin.version} does not satisfy {req.specifier}")
    for pin in pins.values():
        if applies(pin) and pin.hashes == 0:
            problems.append(f"{pin.name} has no hash")
    return problems


@pytest.fixture(scope="module")
def pins() -> dict[NormalizedName, Pin]:
    return parse_lock(LOCK.read_text(encoding="utf-8"))


def test_lock_covers_every_runtime_dependency_within_its_range(
    pins: dict[NormalizedName, Pin],
) -> None:
    assert check_covers(PYPROJECT["project"]["dependencies"], pins) == []


def test_every_pin_has_hashes(pins: dict[NormalizedName, Pin]) -> None:
    assert pins
    assert all(pin.hashes >= 1 for pin in pins.values())


def test_no_dev_only_dependency_is_locked(pins: dict[NormalizedName, Pin]) -> None:
    runtime = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    dev = {
        canonicalize_name(Requirement(r).name)
        for r in PYPROJECT["project"]["optional-dependencies"]["dev"]
    }
    leaked = (dev - runtime) & set(pins)
    assert not leaked, f"dev-only packages in the runtime lock: {sorted(leaked)}"
    assert canonicalize_name(PYPROJECT["project"]["name"]) not in pins


def test_requested_extras_are_resolved(pins: dict[NormalizedName, Pin]) -> None:
    """confluent-kafka[schemaregistry] needs its extra's packages (httpx, authlib...) too."""
    for line in PYPROJECT["project"]["dependencies"]:
        if Requirement(line).extras:
            assert {"authlib", "cachetools", "attrs"} <= set(pins), "the extra is not locked"


def test_build_lock_covers_the_build_backend() -> None:
    pins = parse_lock(BUILD_LOCK.read_text(encoding="utf-8"))
    assert check_covers(PYPROJECT["build-system"]["requires"], pins) == []


def test_lock_is_written_by_make_lock() -> None:
    for path in (LOCK, BUILD_LOCK):
        assert "make lock" in path.read_text(encoding="utf-8").split("\n", 3)[1], path.name


# --- the checks can fail -------------------------------------------------------------------------


def test_check_reports_a_missing_an_out_of_range_and_an_unhashed_pin() -> None:
    text = (
        "fastavro==1.8.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
        "pyyaml==6.0.2\n"
        "pywin==1 ; sys_platform == 'win32'\n"
    )
    pins = parse_lock(text)
    problems = check_covers(["fastavro>=1.9", "PyYAML>=6", "jmespath>=1.0"], pins)
    assert problems == [
        "fastavro==1.8.0 does not satisfy >=1.9",
        "jmespath is not in the lock",
        "pyyaml has no hash",
    ]


def test_parser_refuses_a_range_in_the_lock() -> None:
    with pytest.raises(AssertionError, match="not pinned"):
        parse_lock("fastavro>=1.9\n")
