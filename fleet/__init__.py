"""The shared language of gpuward: versions, the driver catalog, manifests, inventories.

Pure logic on plain data, standard library only, no I/O beyond reading the
package's own data files: every other package can depend on it, and it can be
tested without any component running. The compatibility gate (``fleet.compat``)
lives here so that the agent and the server cannot disagree about it.
"""
