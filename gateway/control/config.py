"""The ``writes:`` section: every target the gateway may write, and the rules a write obeys.

Nothing is writable unless declared here, by the id of the signal that reads it back (e.g.
``reactor1/feed_pump/speed_setpoint``): values are given in that signal's unit and converted to
the instrument channel's unit for the driver, and the driver's channel must be writable.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["WriteTargetConfig"]

_ROLE = r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$"


class WriteTargetConfig(BaseModel):
    """One writable target with its engineering limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: Annotated[str, Field(min_length=3, max_length=200)] = Field(
        description="The signal id the target is read back as, e.g."
        " 'reactor1/feed_pump/speed_setpoint'; its unit is the unit of written values."
    )
    min: float = Field(description="Lowest value a write may set (engineering limit).")
    max: float = Field(description="Highest value a write may set (engineering limit).")
    max_step: float | None = Field(
        default=None,
        gt=0,
        description="Largest change from the value read from the device just before the"
        " write; null: any change within min..max.",
    )
    max_rate_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Largest change per second since this target's last write (a change of d"
        " needs d / max_rate_per_s seconds after it); null: no rate limit.",
    )
    role: Annotated[str, Field(pattern=_ROLE, max_length=64)] = Field(
        default="operator",
        description="Role a writer needs: holding it, or a role with at least its permissions.",
    )
    signature: Literal["none", "required", "witnessed"] = Field(
        default="none",
        description="'required': an electronic signature (password re-entered, with its"
        " meaning); 'witnessed': also a second person's, who must qualify too.",
    )
    tolerance: float | None = Field(
        default=None,
        ge=0,
        description="Largest difference between the value written and the value read back"
        " that counts as equal, in the target's unit; null: 1e-6 of the value (float32).",
    )
    readback_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="Wait between the write and its read-back (a device that applies writes"
        " on its own cycle).",
    )
    heartbeat: bool = Field(
        default=False,
        description="A communication watchdog's heartbeat (a counter the device expects to"
        " change): only a processor that controls it writes it, through the write path, with"
        " no audit record per beat (the first beat, failures and recoveries are recorded).",
    )
    description: str = Field(default="", max_length=500, description="What the target is.")

    @model_validator(mode="after")
    def _limits(self) -> WriteTargetConfig:
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("min and max must be finite numbers")
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    def tolerance_for(self, value: float) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return 1e-6 * max(1.0, abs(value))
