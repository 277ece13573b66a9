"""The shared language of gpuward: versions, branches, bundle manifests, reports.

Pure logic on plain data, standard library only, no I/O beyond reading the
package's own data files: every other package can depend on it, and it can be
tested without any component running.
"""
