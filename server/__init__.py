"""The pull-only update server: serves the signed repository, collects reports.

It never connects to a node. Agents pull metadata and bundles and push their
reports, which works behind NAT and firewalls and through static mirrors.
"""
