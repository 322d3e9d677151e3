"""Client writes to tag variables become validated PLC writes, with a per-node OPC UA result.

asyncua's value setters can only refuse a write by raising, which fails the whole Write request with
a ServiceFault; and its AccessLevel check answers BadUserAccessDenied where OPC 10000-4 §5.10.4
specifies BadNotWritable. So the attribute service is subclassed: writes to this PLC's tags are
answered here, every other node is passed to asyncua unchanged.

A write never changes the variable: an accepted value is queued for the PLC, which applies it at its
next scan, and the variable shows it once that scan's image is published (ARCHITECTURE.md: "nothing
publishes an assumed value").

UserAccessLevel / UserExecutable per session user (``user_access_after_read``): asyncua's Read service
does not see the user, but its PostRead callback does and may replace results, so a viewer reads the
setpoints' UserAccessLevel without CurrentWrite and the methods' UserExecutable false — what HMIs use to
grey out inputs. The stored attribute stays the operator's view (nodes.py shares it between nodes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future

from asyncua import ua
from asyncua.common.callback import ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AddressSpace, AttributeService

from devices.opcua import values
from devices.opcua._ua import AttributeIds, StatusCodes, datavalue, status
from devices.opcua.address_space import TagRef
from devices.opcua.config import Role
from devices.plc import Plc

log = logging.getLogger(__name__)

RoleOf = Callable[[User], Role]


def _admin_is_operator(user: User) -> Role:
    return Role.OPERATOR if user.role in (UserRole.Admin, UserRole.User) else Role.VIEWER


class PlcAttributeService(AttributeService):
    """The Write service for a server whose tag variables belong to one PLC."""

    def __init__(
        self,
        aspace: AddressSpace,
        plc: Plc,
        tags: dict[ua.NodeId, TagRef],
        own_namespaces: set[int],
        role_of: RoleOf = _admin_is_operator,
    ) -> None:
        super().__init__(aspace)
        self._plc = plc
        self._tags = tags
        self._own_namespaces = own_namespaces
        self._role_of = role_of
        self._methods: set[ua.NodeId] = set()
        self.accepted = 0
        self.refused = 0

    async def write(
        self,
        params: ua.WriteParameters,
        user: User = User(role=UserRole.Admin),  # noqa: B008 (asyncua's signature)
    ) -> list[ua.StatusCode]:
        results: list[ua.StatusCode | None] = []
        passed: list[tuple[int, ua.WriteValue]] = []
        for index, item in enumerate(params.NodesToWrite):
            ref = self._tags.get(item.NodeId)
            if ref is not None:
                results.append(status(self._write_tag(item, ref, user)))
            elif item.NodeId.NamespaceIndex in self._own_namespaces and item.NodeId in self._aspace:
                # Folders, asset objects and properties are fixed by the tag tables.
                results.append(status(StatusCodes.BadNotWritable))
            else:
                results.append(None)
                passed.append((index, item))
        if passed:
            rest = await super().write(ua.WriteParameters(NodesToWrite=[item for _, item in passed]), user)
            for (index, _), code in zip(passed, rest, strict=True):
                results[index] = code
        return [code if code is not None else status(StatusCodes.BadInternalError) for code in results]

    def set_methods(self, methods: set[ua.NodeId]) -> None:
        self._methods = methods

    async def user_access_after_read(self, event: ServerItemCallback, dispatcher: object) -> None:
        """PostRead callback: per-user UserAccessLevel of writable tags and UserExecutable of methods."""
        user = event.user if isinstance(event.user, User) else User()
        request: ua.ReadParameters = event.request_params
        results: list[ua.DataValue] = event.response_params
        operator: bool | None = None  # resolved only when a read asks for a user attribute
        for index, item in enumerate(request.NodesToRead):
            attribute = item.AttributeId
            if attribute == AttributeIds.UserAccessLevel:
                ref = self._tags.get(item.NodeId)
                if ref is None or not ref.spec.writable:
                    continue
            elif attribute == AttributeIds.UserExecutable:
                if item.NodeId not in self._methods:
                    continue
            else:
                continue
            if operator is None:
                operator = self._role_of(user) is Role.OPERATOR
            stored = results[index]
            if operator or stored.Value is None or stored.StatusCode is None or not stored.StatusCode.is_good():
                continue
            if attribute == AttributeIds.UserExecutable:
                variant = ua.Variant(False, ua.VariantType.Boolean)
            else:
                level = int(stored.Value.Value) & ~values.ACCESS_WRITE
                variant = ua.Variant(level, ua.VariantType.Byte)
            results[index] = datavalue(variant, status(StatusCodes.Good))

    def _write_tag(self, item: ua.WriteValue, ref: TagRef, user: User) -> int:
        spec = ref.spec
        if item.AttributeId != AttributeIds.Value or not spec.writable:
            return self._refuse(ref, user, StatusCodes.BadNotWritable, "read-only")
        if self._role_of(user) is not Role.OPERATOR:
            return self._refuse(ref, user, StatusCodes.BadUserAccessDenied, "needs the operator role")
        if item.IndexRange:
            return self._refuse(ref, user, StatusCodes.BadIndexRangeInvalid, "scalar variable")
        datavalue = item.Value
        if datavalue.StatusCode is not None and not datavalue.StatusCode.is_good():
            # The PLC owns quality; a client may not write a StatusCode (OPC 10000-4 §5.10.4).
            return self._refuse(ref, user, StatusCodes.BadWriteNotSupported, "StatusCode write")
        try:
            value = values.from_variant(spec.datatype, datavalue.Value)
            done = self._plc.submit_write(ref.asset_id, spec.key, value)
        except (TypeError, ValueError, PermissionError, KeyError) as exc:
            return self._refuse(ref, user, values.status_for_error(exc), str(exc))
        done.add_done_callback(lambda future: self._applied(ref, future))
        self.accepted += 1
        log.info(
            "OPC UA write %s/%s = %r by %s queued", ref.asset_id, spec.key, value, user.name or "anonymous"
        )
        return StatusCodes.Good

    def _refuse(self, ref: TagRef, user: User, code: int, reason: str) -> int:
        self.refused += 1
        log.info(
            "OPC UA write %s/%s by %s refused: %s (%s)",
            ref.asset_id,
            ref.spec.key,
            user.name or "anonymous",
            status(code).name,
            reason,
        )
        return code

    @staticmethod
    def _applied(ref: TagRef, future: Future[None]) -> None:
        exc = future.exception() if not future.cancelled() else None
        if exc is not None:
            log.warning(
                "OPC UA write %s/%s was refused by the PLC at scan: %s", ref.asset_id, ref.spec.key, exc
            )
