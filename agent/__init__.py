"""The on-node agent: pulls signed bundles, installs them A/B, checks health, reports.

It runs unprivileged and trusts nothing it downloads until python-tuf has
verified it against the root of trust installed with the agent.
"""
