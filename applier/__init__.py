"""The root side of the node: the one A/B state machine, with no network.

``applier.state_machine`` takes a bundle the agent spooled, re-verifies it
offline (``applier.spool_intake``), stages it in the inactive slot, drains the
GPUs, switches, runs the health gate, and commits or rolls back, journaling
every step so any crash resumes. Installers, the kernel hold, unpacking and
the checks on files the agent controls live beside it. The agent never imports
this package; in inline mode the ``gpuward`` command runs it in-process.
"""
