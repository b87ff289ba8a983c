"""Where the parties live: in this process (tests) or as Ray actors (`actors.RayBackend`).

The coordinator speaks only this small interface, so one round's logic runs the same
in both. Roles are addressed by name: ``client:<hospital>`` or ``cohort:<k>`` (training
parties), ``aggregator``, ``keyholder:<i>``. Calls return handles; handles passed as
arguments are resolved by the callee's side (as Ray does for object refs), so a
client's payload can go to the aggregator without passing through the coordinator.

A call names one of the party's public methods: a name with a leading underscore (a
private helper, or Ray's ``__ray_call__``, which would run any code inside the actor)
is refused by both backends. That is the simulation's boundary, not a sandbox: the
driver process starts every party, and in a deployment each party runs in its own
trust domain and answers only its public methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedsim.config import ResourceSpec
from fedsim.errors import PartyLost, ProtocolError


@dataclass(frozen=True)
class PartySpec:
    """One party to start: a role name, the plain class and its constructor arguments."""

    role: str
    cls: type
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    kind: str = "client"  # client (a hospital or a cohort) | aggregator | keyholder


class Backend(Protocol):
    """What the coordinator needs from a place to run parties."""

    def start(self, parties: Sequence[PartySpec]) -> None: ...
    def put(self, value: Any) -> Any: ...
    def call(self, role: str, method: str, *args: Any, num_returns: int = 1,
             **kwargs: Any) -> Any: ...
    def wait(self, handles: Sequence[Any], timeout: float | None = None
             ) -> tuple[list[Any], list[Any]]:
        """``(ready, pending)``: at least one ready handle, or none after ``timeout``
        seconds (None: no limit)."""
        ...
    def get(self, handle: Any) -> Any:
        """The value of a handle, or a list of values for a list of handles (one wait)."""
        ...

    def defer(self, handle: Any) -> Deferred:
        """A picklable promise of ``handle``'s value that a party resolves when it needs
        it (a client waits for the round's noise commitment only when it signs)."""
        ...

    def stop(self, role: str) -> None: ...
    def shutdown(self) -> None: ...


def check_method(role: str, method: str) -> None:
    """Refuse a call of anything but a party's public method (`ProtocolError`)."""
    if not method or method.startswith("_"):
        raise ProtocolError(f"{role}: {method!r} is not a public method of the party; "
                            "parties answer only their public methods")


class Deferred(Protocol):
    def get(self) -> Any: ...


@dataclass(frozen=True)
class Ready:
    """A deferred value that is already there (the in-process backend)."""

    value: Any

    def get(self) -> Any:
        return self.value


class _Done:
    """A completed in-process call: its value or the exception it raised."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error


class InProcessBackend:
    """Runs every party as a plain object in this process, one call at a time."""

    def __init__(self) -> None:
        self.parties: dict[str, Any] = {}

    def start(self, parties: Sequence[PartySpec]) -> None:
        for spec in parties:
            self.parties[spec.role] = spec.cls(*spec.args, **spec.kwargs)

    def put(self, value: Any) -> _Done:
        return _Done(value)

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, _Done):
            return self.get(value)
        return value

    def call(self, role: str, method: str, *args: Any, num_returns: int = 1,
             **kwargs: Any) -> Any:
        check_method(role, method)
        try:
            target = self.parties[role]
        except KeyError:
            error: BaseException = PartyLost(role, f"{role} is gone (stopped)")
            return _split(_Done(error=error), num_returns)
        try:
            args = tuple(self._resolve(a) for a in args)
            kwargs = {k: self._resolve(v) for k, v in kwargs.items()}
            done = _Done(getattr(target, method)(*args, **kwargs))
        except Exception as err:  # surfaced by get(), as Ray does
            done = _Done(error=err)
        return _split(done, num_returns)

    def wait(self, handles: Sequence[Any], timeout: float | None = None
             ) -> tuple[list[Any], list[Any]]:
        return list(handles[:1]), list(handles[1:])  # every call has already run

    def defer(self, handle: Any) -> Ready:
        return Ready(self.get(handle))

    def get(self, handle: Any) -> Any:
        if isinstance(handle, list):
            return [self.get(h) for h in handle]
        if handle.error is not None:
            raise handle.error
        return handle.value

    def stop(self, role: str) -> None:
        self.parties.pop(role, None)

    def shutdown(self) -> None:
        self.parties.clear()


def _split(done: _Done, num_returns: int) -> Any:
    if num_returns == 1:
        return done
    if done.error is not None:
        return tuple(_Done(error=done.error) for _ in range(num_returns))
    return tuple(_Done(v) for v in done.value)
