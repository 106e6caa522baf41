"""`examples/events/`: one event per channel, each previewed by the CLI into a profile update."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tests.e2e.test_cli_errors import run_all

pytestmark = pytest.mark.e2e

# The example file of each channel and the reference rule (examples/mapping.yaml) it must match.
EXAMPLES = {
    "call-center.json": ("CALL_CENTER", "call-centre"),
    "loan.json": ("LOAN", "loan-funded"),
    "loyalty-store.json": ("LOYALTY_STORE", "big-basket"),
    "kiosk.json": ("KIOSK", "kiosk"),
}


def test_every_channel_has_an_example_event_that_previews_to_an_update() -> None:
    folder = ROOT / "examples" / "events"
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(EXAMPLES)
    results = run_all(
        {
            name: ["preview", "--config", "examples/config.yaml", "--event", str(folder / name)]
            + ["--json"]
            for name in EXAMPLES
        }
    )
    for name, (code, out, err) in results.items():
        channel, rule = EXAMPLES[name]
        assert json.loads((folder / name).read_text())["channel"] == channel
        assert code == 0, f"{name}: {err}"
        report = json.loads(out)
        assert report["outcome"] == "update", f"{name}: {report}"
        assert rule in report["rules"], f"{name}: {report['rules']}"
        assert report["attributes"] and len(report["requests"]) == 1
