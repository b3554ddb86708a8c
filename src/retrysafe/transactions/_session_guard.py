"""Keep a SQLAlchemy session from ending the transaction of a transactional block under it.

The block's claim commits with its writes when the block ends (B29). A `session.commit()`
inside it would commit the claim in flight with the writes made so far: a crash before the
block ends would leave those writes done and the key free to be taken over once its lease ends,
so a retry would do them again. A `session.rollback()` (or `close()`) inside it undoes the
claim with the writes, and what the block writes after would land with no key at all.

So while the block runs, a commit that would end its transaction raises before anything is
committed (`before_commit`), and one that ended it some other way (a rollback, a close) is
noticed (`after_transaction_end`): the block's next record statement raises, and what the
session wrote after is rolled back. A savepoint the block opens and commits itself is its own
business: it ends inside the block's transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, SessionTransaction

__all__ = ["COMMITTED_INSIDE", "ENDED_INSIDE", "SessionGuard"]

COMMITTED_INSIDE: Final = (
    "The session was committed inside a transactional block; nothing was committed. The key "
    "commits with the block's writes when the block ends: do not commit or roll back the "
    "session inside it (a savepoint of its own, session.begin_nested(), may be)."
)
ENDED_INSIDE: Final = (
    "The session's transaction was rolled back or closed inside a transactional block: the "
    "key's claim went with it, and nothing the block wrote is kept. Do not commit or roll back "
    "the session inside the block; raise to undo it."
)


class SessionGuard:
    """Watches `session` while `transaction`, the block's, is open (`arm` ... `disarm`).

    Args:
        session: the caller's session (an `AsyncSession`'s `sync_session`).
        transaction: the block's transaction (an `AsyncSessionTransaction`'s
            `sync_transaction`).
    """

    __slots__ = ("_session", "_transaction", "ended", "ending")

    def __init__(self, session: Session, transaction: SessionTransaction) -> None:
        self._session = session
        self._transaction = transaction
        self.ending = False  # the block itself commits or rolls back its transaction
        self.ended = False  # something else ended it

    @classmethod
    def over(cls, session: Any, transaction: Any) -> SessionGuard:
        """Return the guard of a `Session` or an `AsyncSession` and the transaction it began;
        the events are the sync objects' (an `AsyncSession`'s `sync_session`, an
        `AsyncSessionTransaction`'s `sync_transaction`)."""
        return cls(
            getattr(session, "sync_session", session),
            getattr(transaction, "sync_transaction", transaction),
        )

    def arm(self) -> None:
        """Start watching the session's commits and transaction ends."""
        event.listen(self._session, "before_commit", self._before_commit)
        event.listen(self._session, "after_transaction_end", self._after_end)

    def disarm(self) -> None:
        """Stop watching."""
        event.remove(self._session, "before_commit", self._before_commit)
        event.remove(self._session, "after_transaction_end", self._after_end)

    def _before_commit(self, session: Session) -> None:
        # A commit ends the innermost transaction first, so one that would commit the block's
        # (itself, or a parent of it) reaches it here while it is the innermost open: refuse
        # there, before the flush. A savepoint opened inside the block commits freely.
        innermost = session.get_nested_transaction() or session.get_transaction()
        if not self.ending and innermost is self._transaction:
            raise RuntimeError(COMMITTED_INSIDE)

    def _after_end(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction is self._transaction and not self.ending:
            self.ended = True
