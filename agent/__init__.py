"""The unprivileged, network-facing side of the node.

It pulls the image and director repositories through python-tuf, gates what
they offer against this node's GPUs, hands a verified bundle to the applier
through the spool, and reports signed (and attested) health. It trusts nothing
it downloads until python-tuf has verified it against the root of trust
installed with the agent, and never touches the slots itself.
"""
