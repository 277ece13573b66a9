"""A command runner that records argv, for commands that cannot run here.

dnf has no RHEL machine here, nvidia-installer no GPU, modprobe no kernel of the
node's: those sides are tested by the exact commands they run and the files
they write. Canned outputs are keyed by the whole command, or by its first four words.
"""

from __future__ import annotations

from collections.abc import Sequence


class Recorder:
    """A runner that records argv and answers from a table of canned outputs."""

    def __init__(self, answers: dict[str, str] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        whole = " ".join(argv)
        return self.answers.get(whole, self.answers.get(" ".join(argv[:4]), ""))
