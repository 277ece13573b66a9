"""A fresh SoftHSM2 token per test (tests/softhsm.py), for the token key tests."""

from tests.softhsm import softhsm

__all__ = ["softhsm"]
