"""Flow chains: multi-step work that undoes itself on failure (ZStack's ``FlowChain``).

A chain runs its flows in order. When one fails, the flows that completed are rolled back in
reverse order, then the chain's ``finally`` callbacks run, and the caller gets an ErrorCode whose
cause is the failure. A :class:`NoRollbackFlow` has nothing to undo. Chains can be assembled from
flows that several plugins contribute (see :meth:`FlowChain.assemble` and the ``zstack_flows``
hook), which is how VM creation gets its volume from storage and its NIC from network.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import attrs

from .errors import ErrorCode, ZStackError, err, operr

__all__ = ["Flow", "FlowChain", "FlowContribution", "FlowError", "NoRollbackFlow"]

log = logging.getLogger("zstack.flow")


class Flow(abc.ABC):
    """One step. Override :meth:`run`, and :meth:`rollback` to undo what ``run`` did.

    ``data`` is the dict shared by every flow of one chain run: a flow reads what earlier flows
    put there and adds what later ones (and its own rollback) need.
    """

    name: str = ""

    @abc.abstractmethod
    async def run(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    async def rollback(self, data: dict[str, Any]) -> None:
        return None

    @property
    def flow_name(self) -> str:
        return self.name or type(self).__name__


class NoRollbackFlow(Flow):
    """A step with nothing to undo (a check, a read)."""

    async def rollback(self, data: dict[str, Any]) -> None:  # pragma: no cover - never called
        return None


@attrs.frozen(kw_only=True)
class FlowContribution:
    """A flow a plugin adds to a named chain, at position ``order`` (lower runs first).

    Returned from the ``zstack_flows`` hook. Positions of the well-known chains are constants in
    :mod:`zstack_core.header` so contributors from different plugins interleave predictably.
    """

    chain: str
    flow: Flow
    order: int


class FlowError(ZStackError):
    """A chain failed; ``error`` explains why, ``rollback_errors`` lists undo steps that failed."""

    def __init__(self, error: ErrorCode, rollback_errors: Sequence[ErrorCode] = ()) -> None:
        super().__init__(error)
        self.rollback_errors = list(rollback_errors)


def _to_error(exc: BaseException, flow: Flow) -> ErrorCode:
    if isinstance(exc, ZStackError):
        return exc.error
    return err("1000", f"{type(exc).__name__}: {exc} in flow {flow.flow_name}")


class FlowChain:
    """An ordered list of flows run as one unit of work."""

    def __init__(self, name: str, flows: Iterable[Flow] = ()) -> None:
        self.name = name
        self.flows: list[Flow] = list(flows)
        self._finally: list[Callable[[dict[str, Any]], Awaitable[None] | None]] = []

    @classmethod
    def assemble(cls, name: str, contributions: Iterable[FlowContribution]) -> FlowChain:
        """A chain of the contributions to ``name``, sorted by ``order`` (stable)."""
        mine = [c for c in contributions if c.chain == name]
        mine.sort(key=lambda c: c.order)
        return cls(name, [c.flow for c in mine])

    def then(self, flow: Flow) -> FlowChain:
        self.flows.append(flow)
        return self

    def finally_(self, callback: Callable[[dict[str, Any]], Awaitable[None] | None]) -> FlowChain:
        """Run ``callback(data)`` after the chain, whether it succeeded or rolled back."""
        self._finally.append(callback)
        return self

    async def run(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run every flow; return ``data``. On failure roll back and raise :class:`FlowError`."""
        data = {} if data is None else data
        done: list[Flow] = []
        try:
            for flow in self.flows:
                try:
                    await flow.run(data)
                except BaseException as exc:  # noqa: BLE001 - cancellation must roll back too
                    cause = _to_error(exc, flow)
                    rollback_errors = await self._rollback(done, data)
                    error = operr(f"flow chain {self.name} failed at {flow.flow_name}", cause=cause)
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    if not isinstance(exc, Exception):  # CancelledError: rolled back, still cancelled
                        raise
                    if not isinstance(exc, ZStackError):
                        log.error("flow %s of chain %s raised", flow.flow_name, self.name, exc_info=exc)
                    raise FlowError(error, rollback_errors) from exc
                if not isinstance(flow, NoRollbackFlow):
                    done.append(flow)
            return data
        finally:
            for callback in self._finally:
                try:
                    result = callback(data)
                    if result is not None:
                        await result
                except Exception:  # a finally must not hide the chain's own outcome
                    log.exception("finally of flow chain %s raised", self.name)

    async def _rollback(self, done: list[Flow], data: dict[str, Any]) -> list[ErrorCode]:
        errors: list[ErrorCode] = []
        for flow in reversed(done):
            try:
                await flow.rollback(data)
            except Exception as exc:  # keep undoing the others; report every failure
                log.exception("rollback of flow %s in chain %s failed", flow.flow_name, self.name)
                errors.append(_to_error(exc, flow))
        return errors
