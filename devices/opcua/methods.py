"""OPC UA Methods for asset commands: typed arguments in, the PLC's verdict out.

A call returns once the PLC has applied (or refused) the command at its next scan, so a client that
reads after a Good call sees the command's effect from that scan on. Argument errors follow
OPC 10000-4 §5.11.2: BadArgumentsMissing / BadTooManyArguments for the wrong count, otherwise
BadInvalidArgument with a per-argument InputArgumentResult (BadTypeMismatch, BadOutOfRange). A
command the model refuses (CommandRejected) is BadInvalidArgument as well; its reason travels in
InputArgumentDiagnosticInfos[*].AdditionalInfo (one entry even for a command without arguments, so
the reason always reaches a client that looks) and in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asyncua import ua

from devices.assets.base import ArgValue
from devices.opcua import values
from devices.opcua._ua import StatusCodes, diagnostic, status
from devices.opcua.address_space import CommandRef
from devices.plc import Plc
from devices.tags import CommandRejected

log = logging.getLogger(__name__)

MethodHandler = Callable[..., Awaitable[ua.CallMethodResult]]

# A command waits for this many scans (in real time, at the clock's speed) plus a margin before the
# call gives up with BadTimeout; a stopped PLC must not hang clients until their request timeout.
WAIT_SCANS = 3
WAIT_MARGIN_S = 1.0


def _result(
    code: int, arg_results: list[int] | None = None, reasons: list[str] | None = None
) -> ua.CallMethodResult:
    result = ua.CallMethodResult(StatusCode=status(code))
    if arg_results is not None:
        result.InputArgumentResults = [status(c) for c in arg_results]
    if reasons:
        result.InputArgumentDiagnosticInfos = [diagnostic(reason) for reason in reasons]
    return result


class CommandMethods:
    """Builds the method handlers of one PLC's commands."""

    def __init__(self, plc: Plc) -> None:
        self._plc = plc
        self.applied = 0
        self.rejected = 0

    def timeout_s(self) -> float:
        return WAIT_SCANS * self._plc.scan_period_s / self._plc.clock.speed + WAIT_MARGIN_S

    def handler(self, ref: CommandRef) -> MethodHandler:
        async def call(object_id: ua.NodeId, *args: Any) -> ua.CallMethodResult:
            return await self.call(ref, object_id, list(args))

        return call

    async def call(
        self, ref: CommandRef, object_id: ua.NodeId, args: list[ua.Variant]
    ) -> ua.CallMethodResult:
        spec = ref.spec
        if object_id != ref.asset_node:
            return _result(StatusCodes.BadMethodInvalid)
        if len(args) < len(spec.args):
            return _result(StatusCodes.BadArgumentsMissing)
        if len(args) > len(spec.args):
            return _result(StatusCodes.BadTooManyArguments)

        decoded: dict[str, ArgValue] = {}
        codes: list[int] = []
        reasons: list[str] = []
        for arg, variant in zip(spec.args, args, strict=True):
            try:
                decoded[arg.name] = values.check_argument(arg, variant)
            except TypeError as exc:
                codes.append(StatusCodes.BadTypeMismatch)
                reasons.append(f"{arg.name}: {exc}")
            except ValueError as exc:
                codes.append(StatusCodes.BadOutOfRange)
                reasons.append(str(exc))
            else:
                codes.append(StatusCodes.Good)
                reasons.append("")
        if any(code != StatusCodes.Good for code in codes):
            return self._reject(ref, "; ".join(r for r in reasons if r), codes, reasons)

        try:
            done = self._plc.submit_command(ref.asset_id, spec.name, decoded)
        except CommandRejected as exc:
            return self._reject(ref, str(exc), [StatusCodes.Good] * len(args), None)
        # asyncio.wait, not wait_for: cancelling the wrapper would cancel the PLC's Future, and the
        # PLC's scan would then fail setting its result.
        waiter = asyncio.wrap_future(done)
        finished, _ = await asyncio.wait({waiter}, timeout=self.timeout_s())
        if not finished:
            log.warning(
                "OPC UA call %s.%s: the PLC did not scan within %.1f s",
                ref.asset_id,
                spec.name,
                self.timeout_s(),
            )
            return _result(StatusCodes.BadTimeout)
        failure = waiter.exception()
        if isinstance(failure, CommandRejected):
            return self._reject(ref, str(failure), [StatusCodes.Good] * len(args), None)
        if failure is not None:
            log.error("OPC UA call %s.%s failed", ref.asset_id, spec.name, exc_info=failure)
            return _result(StatusCodes.BadInternalError)
        self.applied += 1
        log.info("OPC UA call %s.%s(%s) applied", ref.asset_id, spec.name, decoded)
        return _result(StatusCodes.Good, [StatusCodes.Good] * len(args))

    def _reject(
        self, ref: CommandRef, reason: str, codes: list[int], reasons: list[str] | None
    ) -> ua.CallMethodResult:
        self.rejected += 1
        log.info("OPC UA call %s.%s rejected: %s", ref.asset_id, ref.spec.name, reason)
        per_arg = reasons if reasons is not None else [reason] * max(len(codes), 1)
        return _result(StatusCodes.BadInvalidArgument, codes, per_arg)
