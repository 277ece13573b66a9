"""What both node processes share: the unprivileged agent and the root applier.

Config, NVML access, the slots and the applier's journal (their formats and
atomic updates), the spool's format, TPM access, the firewall policy and the
TUF channel core. Nothing here decides to install anything: that is the
applier's, and fetching from the network is the agent's.
"""
