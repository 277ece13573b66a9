"""Remediation: the server acting on what nodes report, within each pool's guard rails.

The rules are pure (``fleet.remediation``); here they meet the store, the clock
and the scheduler. ``settings`` reads ``[remediation]`` of server.toml,
``scheduler`` carries actions out where the operator's credentials live (Slurm's
scontrol, the operator's hooks), ``engine`` runs the rules every tick, and
``api`` shows boards and the audit log and takes approvals and releases.
"""
