"""Reading Prometheus' text format in tests, with prometheus_client's own parser,
and promtool's lint of it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


class Exposition:
    """One scrape's samples, by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The one sample of ``name`` whose labels include ``labels``."""
        found = self.matching(name, **labels)
        assert len(found) == 1, (name, labels, found)
        return next(iter(found.values()))

    def matching(self, name: str, **labels: str) -> dict[Labels, float]:
        wanted = set(labels.items())
        return {
            have: value
            for (sample, have), value in self.samples.items()
            if sample == name and wanted <= have
        }


def installed(name: str) -> str:
    """The path of a Prometheus tool; a missing one fails the test (never a skip):
    CI installs them with ``make setup``."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is missing: install Debian's prometheus and prometheus-alertmanager "
            "(make setup does)"
        )
    return found


def promtool() -> str:
    return installed("promtool")


def check_metrics(text: str) -> None:
    """``promtool check metrics`` finds nothing to say about ``text``."""
    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
