"""The ``options:`` of an Ocean Insight spectrometer speaking OBP over a serial line."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gateway import SerialPort

__all__ = ["ObpOptions"]


class ObpOptions(BaseModel):
    """How to reach the spectrometer and how to turn its pixels into a spectrum."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: SerialPort = Field(
        min_length=1,
        description=(
            "Serial device path (/dev/ttyUSB0, a pty; a relative one like data/raman.tty is"
            " relative to the config file's folder) or pyserial URL (socket://127.0.0.1:15030)."
        ),
    )
    baudrate: int = Field(default=115200, gt=0, description="Serial line speed, bits per second.")
    timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Longest wait for a reply, on top of the integration time for a spectrum.",
    )
    integration_time_ms: float = Field(
        default=100.0,
        ge=1,
        le=10000,
        description="Detector integration time per spectrum, milliseconds (set at connect).",
    )
    axis: Literal["raman_shift", "wavelength"] = Field(
        default="raman_shift",
        description=(
            "Spectral axis published with each spectrum: Raman shift in cm-1 (needs"
            " laser_wavelength_nm) or wavelength in nm, from the device's calibration."
        ),
    )
    laser_wavelength_nm: float | None = Field(
        default=None,
        gt=0,
        validate_default=True,
        description=(
            "Excitation wavelength λ0 in nm (e.g. 785); required for the Raman shift axis, and"
            " below every pixel's wavelength."
        ),
    )
    dark_pixels: int = Field(
        default=0,
        ge=0,
        le=256,
        description=(
            "Number of optically masked pixels at the start of the detector whose mean is"
            " subtracted from every pixel; 0 = no dark subtraction. The masked pixels are not"
            " published: spectrum and axis hold the optical pixels only."
        ),
    )
    checksum: Literal["none", "md5"] = Field(
        default="none",
        description=(
            "Checksum on requests: none (as python-seabreeze sends) or md5. Replies carrying an"
            " MD5 checksum are verified either way."
        ),
    )

    @field_validator("laser_wavelength_nm")
    @classmethod
    def _required_for_raman(cls, value: float | None, info: ValidationInfo) -> float | None:
        # A field validator, not a model validator, so that the error's path names the field.
        if value is None and info.data.get("axis") == "raman_shift":
            raise ValueError("laser_wavelength_nm is required when axis is raman_shift")
        return value
