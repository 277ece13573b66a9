"""The server renews online metadata by itself and warns about offline roles."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from gpuward.node import run_once
from server.resigner import OnlineSigner
from tests.conftest import Site


def test_nothing_is_renewed_while_fresh(site: Site) -> None:
    assert OnlineSigner(site.repo, site.director).run_once().renewed == ()


def test_timestamp_and_snapshot_renewed_before_expiry(site: Site) -> None:
    published = site.publish("580.65.06")
    site.assign("node-1", published, counter=1)
    later = datetime.now(UTC) + timedelta(hours=13)  # past half a timestamp's day
    renewed = OnlineSigner(site.repo, site.director, now=lambda: later).run_once().renewed
    assert renewed == ("image:timestamp", "director/node-1:timestamp")

    much_later = datetime.now(UTC) + timedelta(days=4)  # past half a snapshot's week
    renewed = OnlineSigner(site.repo, site.director, now=lambda: much_later).run_once().renewed
    assert "image:snapshot" in renewed and "director/node-1:snapshot" in renewed
    assert site.repo.timestamp().signed.expires > datetime.now(UTC) + timedelta(hours=23)


def test_offline_roles_near_expiry_are_warned_about(site: Site) -> None:
    site.publish("580.65.06")
    near_the_end = datetime.now(UTC) + timedelta(days=80)  # targets live 90 days
    with capture_logs() as logs:
        OnlineSigner(site.repo, now=lambda: near_the_end).run_once()
    warned = {e["role"] for e in logs if e["event"] == "metadata_near_expiry"}
    assert warned == {"targets", "R580"}


def test_the_running_server_renews_an_expiring_timestamp(site: Site) -> None:
    """A timestamp about to lapse is renewed at start-up, so agents keep updating."""
    site.publish("580.65.06")
    site.repo.sign_timestamp(expires=datetime.now(UTC) + timedelta(minutes=1))
    site.server.stop()
    from server.lifecycle import BackgroundServer

    with BackgroundServer(dataclasses.replace(site.server.config, port=0)) as server:
        site.server = server
        assert site.repo.timestamp().signed.expires > datetime.now(UTC) + timedelta(hours=23)
        assert run_once(site.agent()).outcome.update == "committed"


def test_one_broken_repository_leaves_the_others_renewed(site: Site) -> None:
    published = site.publish("580.65.06")
    site.assign("node-1", published, counter=1)
    site.assign("node-2", published, counter=1)
    assert site.director is not None
    broken = site.director.node("node-1").metadata_dir / "timestamp.json"
    broken.unlink()
    broken.mkdir()  # an OSError, not a GpuwardError
    later = datetime.now(UTC) + timedelta(hours=13)
    done = OnlineSigner(site.repo, site.director, now=lambda: later).run_once()
    assert done.renewed == ("image:timestamp", "director/node-2:timestamp")
    (problem,) = done.problems
    assert problem.role.startswith("director/node-1:")
    assert problem.reason.startswith("IsADirectoryError") and str(broken) in problem.reason
    assert done.nearest_expiry is not None
    assert done.nearest_expiry.expires > datetime.now(UTC) + timedelta(hours=23)
