"""Device identity of a Modbus instrument: Read Device Identification (function 43, MEI 14).

The standard objects say who made the device and what it is: VendorName (0x00), ProductCode
(0x01), MajorMinorRevision (0x02) are mandatory ("basic"); VendorUrl (0x03), ProductName
(0x04), ModelName (0x05), UserApplicationName (0x06) optional ("regular"). A serial number has
no standard object: devices keep it in a private ("extended", 0x80-0xFF) object of their own,
which the ``identity`` options name. Pure: the driver does the reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway import DeviceIdentity

__all__ = ["IdentityOptions", "IdentitySpec", "identity_from_objects", "read_code_for"]

VENDOR_NAME, PRODUCT_CODE, REVISION, PRODUCT_NAME, MODEL_NAME = 0x00, 0x01, 0x02, 0x04, 0x05
BASIC, REGULAR, EXTENDED = 0x01, 0x02, 0x03


class IdentityOptions(BaseModel):
    """How the driver reads the device's identity when it connects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["device_identification"] = Field(
        default="device_identification",
        description="Read Device Identification (function 43 / MEI 14): manufacturer from"
        " VendorName, model from ModelName (else ProductName, else ProductCode), firmware from"
        " MajorMinorRevision.",
    )
    serial_number_object: int | None = Field(
        default=None,
        ge=0x80,
        le=0xFF,
        description="Private object (0x80-0xFF) holding the serial number; none: not read.",
    )
    hardware_revision_object: int | None = Field(
        default=None,
        ge=0x80,
        le=0xFF,
        description="Private object (0x80-0xFF) holding the hardware revision; none: not read.",
    )


def _shorthand(value: Any) -> Any:
    # `identity: device_identification` is the whole spec when no private object is read.
    return {"method": value} if isinstance(value, str) else value


IdentitySpec = Annotated[IdentityOptions | None, BeforeValidator(_shorthand)]
"""Type of an ``identity:`` field: ``device_identification`` or the mapping of
:class:`IdentityOptions`; ``None``: the driver reports no identity (the configuration's
instrument ``identity:`` may state one)."""


def read_code_for(spec: IdentityOptions) -> int:
    """Regular objects, or extended ones (which include the regular) when private objects are
    read."""
    private = spec.serial_number_object is not None or spec.hardware_revision_object is not None
    return EXTENDED if private else REGULAR


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    text = (
        bytes(raw).decode("latin-1") if isinstance(raw, (bytes, bytearray)) else str(raw)
    ).strip("\x00 \t\r\n")
    return text or None


def identity_from_objects(spec: IdentityOptions, objects: Mapping[int, Any]) -> DeviceIdentity:
    """The identity the device's objects (id → bytes, as read) tell."""
    model = next(
        (
            text
            for text in (_text(objects.get(i)) for i in (MODEL_NAME, PRODUCT_NAME, PRODUCT_CODE))
            if text
        ),
        None,
    )
    serial = spec.serial_number_object
    hardware = spec.hardware_revision_object
    return DeviceIdentity(
        manufacturer=_text(objects.get(VENDOR_NAME)),
        model=model,
        serial_number=_text(objects.get(serial)) if serial is not None else None,
        firmware_revision=_text(objects.get(REVISION)),
        hardware_revision=_text(objects.get(hardware)) if hardware is not None else None,
    )
