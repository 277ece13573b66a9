"""Why nodes degrade: a rack, a row, a PDU, an NVLink domain, a driver, or one card.

Given each node's latest condition (degraded or failed, its driver version and
its topology labels, ``fleet.topology``), ``attribute`` looks for a shared
thing the degraded nodes concentrate on well beyond the fleet's rate:

* Let N be the nodes considered and D the degraded ones among them; the fleet
  rate is p = D / N.
* For each group of nodes sharing one label (``rack``, ``pdu``,
  ``nvlink_domain``, ``row``) or one driver version, with n nodes of which d
  are degraded, and smaller than the fleet (a group of every node tells nothing
  apart), the group is a cluster when all three hold:

  - d >= ``MIN_NODES`` (a pair is a coincidence, and one node is a card);
  - d / n >= ``MIN_SHARE`` (most of the group, not a few of a big one);
  - the binomial tail P(X >= d), X ~ Binomial(n, p), is at most
    ``ALPHA`` / G, where G is the number of groups tested (Bonferroni): the
    chance that degradations falling on nodes at the fleet's rate would pile up
    that much in some group. Using the fleet's rate (the group's own nodes
    included) makes the test conservative.

* A cluster whose degraded nodes all lie in another cluster with a smaller tail
  is explained by that one and left out: ten nodes of one rack that also make
  up most of a PDU's are named once, by the stronger evidence. Equal tails (a
  rack with a PDU of its own) are both named: the data cannot tell them apart.
* A degraded node in no cluster whose trouble lies on one GPU is a card.

A rack or row points at cooling or power, a PDU at power, an NVLink domain at
its switch fabric, a driver version at the driver (and the server halts a
rollout moving nodes to it). Pure and deterministic: the same conditions give
the same answer on any replica.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from fleet.gpu_rules import HEALTHY
from fleet.report import HealthReport
from fleet.topology import DOMAINS, Topology
from fleet.wire import Document, Field, Integer, ListOf, Number, Ref, Text, Wire

MIN_NODES = 3
MIN_SHARE = 0.5
ALPHA = 1e-3
DRIVER = "driver"
CAUSES = (*DOMAINS, DRIVER)
LIKELY = {
    "rack": "the rack's cooling or power",
    "row": "the row's cooling or power",
    "pdu": "the PDU's power",
    "nvlink_domain": "the NVLink domain's switch fabric",
    DRIVER: "the driver version",
}
MAX_LISTED = 1000  # node ids listed per cluster; the counts are always whole


@dataclass(frozen=True)
class NodeCondition:
    """What attribution needs of one node: from its latest report (``of``)."""

    node_id: str
    degraded: bool  # degraded or failed
    driver: str | None
    topology: Topology | None
    cards: tuple[int, ...]  # the GPUs (indexes) its trouble lies on
    reasons: tuple[str, ...]

    @classmethod
    def of(cls, report: HealthReport) -> NodeCondition:
        """Degraded: the node's health status is not healthy, or a GPU is unhealthy."""
        health = report.health
        cards = {g.index for g in report.gpus if not g.healthy}
        reasons = [p for g in report.gpus for p in g.problems]
        if health is not None:
            cards |= {g.sample.index for g in health.gpus if g.findings}
            reasons = [*health.reasons, *reasons]
        degraded = (health is not None and health.status != HEALTHY) or bool(cards)
        return cls(
            report.node_id,
            degraded,
            report.driver_version,
            report.topology,
            tuple(sorted(cards)),
            tuple(reasons),
        )


@dataclass(frozen=True)
class Cluster(Wire):
    """Degraded nodes concentrated on one shared thing, with the evidence."""

    cause: str  # one of CAUSES
    label: str  # the rack's (row's, ...) label, or the driver version
    likely: str  # what it points at, in words
    nodes: int  # nodes in the group
    degraded: int  # of them degraded
    share: float  # degraded / nodes
    fleet_rate: float  # degraded / nodes, fleet-wide
    p_value: float  # binomial tail P(X >= degraded) at the fleet rate
    degraded_nodes: tuple[str, ...]
    message: str

    WIRE = Document(
        Field("cause", Text(choices=frozenset(CAUSES))),
        Field("label", Text(max_len=64), description="the rack (row, ...) or driver version"),
        Field("likely", Text(max_len=128), description="what the cluster points at"),
        Field("nodes", Integer(), description="nodes in the group"),
        Field("degraded", Integer(), description="of them degraded or failed"),
        Field("share", Number(), description="degraded / nodes in the group"),
        Field("fleet_rate", Number(), description="degraded / nodes in the fleet"),
        Field(
            "p_value",
            Number(),
            description="binomial tail: the chance of this many at the fleet rate",
        ),
        Field("degraded_nodes", ListOf(Text(max_len=128), MAX_LISTED)),
        Field("message", Text(max_len=1024)),
        where="cluster",
    )


@dataclass(frozen=True)
class SuspectCard(Wire):
    """A degraded node outside every cluster whose trouble lies on one GPU."""

    node_id: str
    gpu: int
    reasons: tuple[str, ...]

    WIRE = Document(
        Field("node_id", Text(max_len=128)),
        Field("gpu", Integer(maximum=1024), description="the GPU's index on the node"),
        Field("reasons", ListOf(Text(max_len=512), 32)),
        where="card",
    )


@dataclass(frozen=True)
class Attribution(Wire):
    """The fleet's degradations attributed: clusters strongest first, then cards."""

    nodes: int
    degraded: int
    clusters: tuple[Cluster, ...]
    cards: tuple[SuspectCard, ...]
    unexplained: int  # degraded nodes in no cluster and on no single card

    def driver_clusters(self) -> dict[str, Cluster]:
        """The clusters that name a driver version, by version."""
        return {c.label: c for c in self.clusters if c.cause == DRIVER}

    WIRE = Document(
        Field("nodes", Integer(), description="nodes considered (heard from recently)"),
        Field("degraded", Integer(), description="of them degraded or failed"),
        Field("clusters", ListOf(Ref(Cluster), 1024), description="strongest evidence first"),
        Field("cards", ListOf(Ref(SuspectCard), 100_000)),
        Field(
            "unexplained",
            Integer(),
            description="degraded nodes in no cluster and on no single GPU",
        ),
        where="attribution",
    )


def binomial_tail(d: int, n: int, p: float) -> float:
    """P(X >= d) for X ~ Binomial(n, p), summed in log space (no overflow at any n)."""
    if d <= 0:
        return 1.0
    if d > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    top = math.lgamma(n + 1)
    total = math.fsum(
        math.exp(top - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q)
        for k in range(d, n + 1)
    )
    return min(1.0, total)


def _groups(conditions: Sequence[NodeCondition]) -> dict[tuple[str, str], list[NodeCondition]]:
    groups: dict[tuple[str, str], list[NodeCondition]] = defaultdict(list)
    for c in conditions:
        labels = c.topology.labels() if c.topology is not None else {}
        for domain, label in labels.items():
            groups[(domain, label)].append(c)
        if c.driver is not None:
            groups[(DRIVER, c.driver)].append(c)
    return groups


def attribute(conditions: Sequence[NodeCondition]) -> Attribution:
    """The clusters and cards ``conditions`` show (see the module's docstring)."""
    total = len(conditions)
    degraded = [c for c in conditions if c.degraded]
    rate = len(degraded) / total if total else 0.0
    groups = {key: members for key, members in _groups(conditions).items() if len(members) < total}
    limit = ALPHA / max(1, len(groups))
    found: list[tuple[Cluster, frozenset[str]]] = []
    for (cause, label), members in groups.items():
        hit = sorted(c.node_id for c in members if c.degraded)
        share = len(hit) / len(members)
        if len(hit) < MIN_NODES or share < MIN_SHARE:
            continue
        p_value = binomial_tail(len(hit), len(members), rate)
        if p_value > limit:
            continue
        cluster = Cluster(
            cause=cause,
            label=label,
            likely=LIKELY[cause],
            nodes=len(members),
            degraded=len(hit),
            share=share,
            fleet_rate=rate,
            p_value=p_value,
            degraded_nodes=tuple(hit[:MAX_LISTED]),
            message=(
                f"{len(hit)} of the {len(members)} nodes on {cause} {label} are degraded "
                f"({share:.0%}, fleet-wide {rate:.1%}; chance at the fleet rate {p_value:.1e}): "
                f"likely {LIKELY[cause]}"
            ),
        )
        found.append((cluster, frozenset(hit)))
    found.sort(key=lambda f: (f[0].p_value, CAUSES.index(f[0].cause), f[0].label))
    kept = [
        (cluster, hit)
        for cluster, hit in found
        if not any(o.p_value < cluster.p_value and hit <= other for o, other in found)
    ]
    clustered = frozenset[str]().union(*(hit for _, hit in kept))
    rest = [c for c in degraded if c.node_id not in clustered]
    cards = tuple(
        SuspectCard(c.node_id, c.cards[0], c.reasons[:32]) for c in rest if len(c.cards) == 1
    )
    return Attribution(
        nodes=total,
        degraded=len(degraded),
        clusters=tuple(cluster for cluster, _ in kept),
        cards=cards,
        unexplained=len(rest) - len(cards),
    )
