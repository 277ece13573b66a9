"""The outbound firewall: one nftables table, ``inet gpuward``, kept enforced.

Security teams running GPU fleets want NVIDIA software to reach nothing but the
update channel, and telemetry off. The agent turns the ``[firewall]`` table of
its config into an allowlist and keeps it in the kernel:

- ``policy``: the strict, validated config (``FirewallPolicy.from_dict``);
- ``resolve``: the one step that looks at the node (DNS, user names, cgroups);
- ``ruleset``: pure rendering, canonical form, digest and drift description;
- ``nft``: the only code that runs ``nft``;
- ``enforcer``: the agent cycle (re-resolve on schedule, check, repair, report).
"""
