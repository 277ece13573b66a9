"""Addresses that are not plain literals never reach the nft script.

Python reads ``fe80::1%<anything>`` (newlines included) as an IPv6 address with
a zone id. Such text in the ``[firewall]`` table, the agent's server or mirror
URLs, or a name's DNS answers must be refused with one clear line or left out,
and whatever does pass renders into a script whose every address is a literal.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fleet.errors import GpuwardError, InvalidDocument
from node.config import load_config
from node.firewall.nft import Nft
from node.firewall.policy import FirewallPolicy, network_text
from node.firewall.resolve import resolve
from node.firewall.ruleset import daddr, render

INJECTED = "eth0\n\t\tip daddr 0.0.0.0 accept"  # ipaddress reads it as a zone id


HOSTILE = [
    pytest.param("allow", "fe80::1%eth0", id="allow"),
    pytest.param("allow", f"fe80::1%{INJECTED}", id="allow-newline"),
    pytest.param("allow", "fe80::1%eth0/128", id="allow-cidr"),
    pytest.param("allow", "fe80::1%", id="allow-empty-zone"),
    pytest.param("resolvers", "fe80::53%lo", id="resolver"),
    pytest.param("ntp", f"fe80::123%{INJECTED}", id="ntp"),
    pytest.param("update_endpoints", "[fe80::1%eth0]:443", id="endpoint"),
    pytest.param("update_endpoints", f"[fe80::1%{INJECTED}]:443", id="endpoint-newline"),
]


def _config(
    tmp_path: Path,
    field: str | None = None,
    value: str = "",
    server_url: str = "https://10.0.0.7",  # a name would need DNS to render
) -> Path:
    """An agent config whose [firewall] ``field`` lists ``value``; JSON strings are TOML's."""
    lists = {field: [value]} if field is not None and field != "allow" else {}
    text = (
        f'node_id = "n1"\nserver_url = {json.dumps(server_url)}\ntrusted_root = "root.json"\n'
        f'branch = "R580"\nroot_dir = "{tmp_path}"\n[firewall]\n'
    )
    text += "".join(f"{key} = {json.dumps(items)}\n" for key, items in lists.items())
    if field == "allow":
        text += f"[[firewall.allow]]\nto = {json.dumps(value)}\nproto = 'tcp'\nport = 443\n"
    (tmp_path / "root.json").write_text("{}")
    (tmp_path / "agent.toml").write_text(text)
    return tmp_path / "agent.toml"


def _render(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuward",
            "firewall",
            "render",
            "--script",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("gpuward: error: ")
    return line


@pytest.mark.parametrize(("field", "value"), HOSTILE)
def test_a_zone_id_in_the_firewall_table_is_refused_with_one_line(
    tmp_path: Path, field: str, value: str
) -> None:
    config = _config(tmp_path, field, value)
    line = _one_error_line(_render(config))
    assert "has an IPv6 zone id (%...)" in line and "drop the %... part" in line
    with pytest.raises(InvalidDocument, match=r"zone id") as refused:
        load_config(config)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://[fe80::1%25eth0]:8443/", "has an IPv6 zone id"),
        # Python's URL parser itself refuses this bracketed host.
        ("https://[fe80::1%25eth0%0A%09accept]/", "does not appear to be an IPv4 or IPv6"),
    ],
)
def test_a_zone_id_in_the_server_url_is_refused(tmp_path: Path, url: str, why: str) -> None:
    config = _config(tmp_path, server_url=url)
    line = _one_error_line(_render(config))
    assert "server_url" in line and why in line
    with pytest.raises(GpuwardError, match=f"server_url.*{why}"):
        load_config(config)


def test_the_good_config_renders(tmp_path: Path) -> None:
    """The refusals above come from the hostile values, not from the config around them."""
    result = _render(_config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "ip daddr 10.0.0.7 tcp dport 443 counter accept" in result.stdout


def test_scoped_dns_answers_are_left_out() -> None:
    policy = FirewallPolicy.from_dict({"update_endpoints": ["updates.example.org:443"]})
    answers = ["fe80::1%eth0", f"fe80::2%{INJECTED}", "10.0.0.7"]
    resolution = resolve(policy, lambda name: answers)
    assert resolution.addresses == {"updates.example.org": ("10.0.0.7",)}
    with pytest.raises(GpuwardError, match="resolves to no address"):
        resolve(policy, lambda name: answers[:2])


def test_rendering_refuses_a_scoped_network_it_is_handed() -> None:
    with pytest.raises(ValueError, match="zone id"):
        daddr(ipaddress.ip_network(f"fe80::1%{INJECTED}"))


# -- whatever passes validation renders into plain literals -----------------

_ADDRESS = st.ip_addresses().map(str)
_NETWORK = st.tuples(st.ip_addresses(), st.integers(0, 128)).map(
    lambda a: str(ipaddress.ip_network((a[0], min(a[1], a[0].max_prefixlen)), strict=False))
)
_NAME = st.sampled_from(["updates.example.org", "ntp.example.org", "Mirror-1.example.net"])
_ZONED = st.tuples(st.ip_addresses(v=6), st.text(max_size=12)).map(lambda z: f"{z[0]}%{z[1]}")
_HOSTILE = st.one_of(
    _ZONED,
    st.sampled_from(["fe80::1%", "10.0.0.1\n", "::1/128%x", "[fe80::1]", "1.2.3.4 accept"]),
    st.text(max_size=24),
)


def _endpoint(host: str) -> str:
    return f"[{host}]:443" if ":" in host else f"{host}:443"


def _hostile_or(plain: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(plain, plain, _HOSTILE, _HOSTILE.map(_endpoint))


_PLAIN = {
    "resolvers": _ADDRESS,
    "ntp": st.one_of(_ADDRESS, _NETWORK, _NAME),
    "update_endpoints": st.one_of(_ADDRESS, _NAME).map(_endpoint),
    "allow": st.one_of(_ADDRESS, _NETWORK, _NAME),
}
# Half the configs are what each field takes, half have hostile entries mixed in.
_FIELDS = st.booleans().flatmap(
    lambda hostile: st.fixed_dictionaries(
        {k: st.lists(_hostile_or(v) if hostile else v, max_size=3) for k, v in _PLAIN.items()}
    )
)
_ANSWER = st.one_of(_ADDRESS, _ADDRESS, _ZONED, st.text(max_size=12))

_LITERAL = r"[0-9a-f:.]+(?:/[0-9]{1,3})?"
_COMMENT = r' comment "[^"\\\n]*"'
_ALLOW_LINE = re.compile(
    rf"\t\tip6? daddr ({_LITERAL}) (?:tcp|udp) dport [0-9]{{1,5}} counter accept{_COMMENT}"
)
_OTHER_LINE = re.compile(
    r"table inet gpuward(?: \{)?|delete table inet gpuward|\tchain (?:output|restricted) \{"
    r"|\t\ttype filter hook output priority 0; policy (?:drop|accept);|\t\}|\}"
    rf"|\t\t(?!ip6? daddr).*{_COMMENT}"
)


@settings(max_examples=300, deadline=None)
@given(
    fields=_FIELDS,
    answers=st.lists(_ANSWER, min_size=1, max_size=4),
)
def test_whatever_passes_validation_renders_only_plain_literals(
    fields: dict[str, list[str]], answers: list[str]
) -> None:
    doc: dict[str, Any] = {
        **fields,
        "allow": [{"to": to, "proto": "tcp", "port": 443} for to in fields["allow"]],
    }
    try:
        policy = FirewallPolicy.from_dict(doc)
    except InvalidDocument as exc:
        assert "\n" not in str(exc)
        event("config refused")
        return
    assert not any("%" in text for texts in fields.values() for text in texts)
    try:
        resolution = resolve(policy, lambda name: answers)
    except GpuwardError:
        event("resolution refused")
        return
    event("rendered")
    script = Nft.script(render(policy, resolution))
    literals = []
    for line in script.splitlines():
        allowed = _ALLOW_LINE.fullmatch(line)
        if allowed is None:
            assert _OTHER_LINE.fullmatch(line), line
            continue
        literals.append(allowed.group(1))
        assert allowed.group(1) == network_text(ipaddress.ip_network(allowed.group(1)))
    # Every flow the policy allows is still there, as its literal.
    expected = {
        network_text(ipaddress.ip_network(target))
        for flow in policy.allowances()
        for target in resolution.addresses.get(flow.target, (flow.target,))
    }
    assert expected == set(literals)
