"""A mirror carries the transparency log: ``mirror export --db`` writes it beside
the repositories, the mirror still verifies, and ``gpuward log verify`` checks
the carried log offline; a changed entry in the carried copy is caught."""

from __future__ import annotations

import json
from pathlib import Path

from fleet.schema import canonical_json
from tests.cli.test_errors import gpuward
from tests.conftest import Site
from tests.mirror.test_mirror import assert_verifies


def test_a_mirror_carries_a_log_that_verifies_offline(site: Site, tmp_path: Path) -> None:
    site.publish("580.65.06")
    site.server.call(lambda svc: svc.renewer.run_pass())  # type: ignore[union-attr]
    out = tmp_path / "mirror"
    done = gpuward(
        "mirror", "export", "--repo", str(site.repo.root), "--to", str(out),
        "--db", str(site.base / "server.db"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_verifies(site, out)
    log = out / "v1/log"
    pinned = site.repo.root / "keys" / "tlog.vkey"
    assert (log / "tlog.vkey").read_text() == pinned.read_text()
    verified = gpuward("log", "verify", str(log / "export.json"), "--key", str(pinned), "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["size"] > 0

    doc = json.loads((log / "export.json").read_text())
    entry = json.loads(doc["entries"][0])
    entry["subject"] += "-forged"
    doc["entries"][0] = canonical_json(entry).decode()
    (log / "export.json").write_text(json.dumps(doc))
    refused = gpuward("log", "verify", str(log / "export.json"), "--key", str(pinned))
    assert refused.returncode != 0 and "an entry was changed" in refused.stderr
