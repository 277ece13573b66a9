"""Trust: keys, signers and the signed TUF metadata of the image repository.

Private keys of offline roles are sealed with a passphrase; every signer is
reached through a securesystemslib signer URI so a hardware or cloud key can
stand in for a file. Durable writes of anything trust-related go through
``keys.durable_files``.
"""
