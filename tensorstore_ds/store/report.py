"""What ``verify`` reports (for a store directory, a URL, or a store made of parts)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class VerifyReport:
    """What ``verify`` found.

    Parameters
    ----------
    path
        The store.
    checked
        Files checked.
    bytes
        Bytes read.
    problems
        ``(file, kind, detail)`` with kind one of ``missing``, ``truncated``,
        ``extended``, ``altered``, ``unexpected``, ``irregular`` (a symlink,
        a path through a symlink, or not a regular file: the writer makes
        none, and such a file may lie outside the store; it is not read), or
        ``inconsistent`` (intact, but disagreeing with the manifest: what
        ``open_store`` refuses).
    """

    path: str
    checked: int = 0
    bytes: int = 0
    problems: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"store {self.path}: all {self.checked} files verified ({self.bytes:,} bytes)"
        lines = [f"store {self.path}: {len(self.problems)} problem(s) in {self.checked} files"]
        lines += [f"  {kind:10s} {name}: {detail}" for name, kind, detail in self.problems]
        return "\n".join(lines)
