"""The base model and bounded number types of every job-spec document (torch-free)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SpecModel", "Temperature", "Weight"]


class SpecModel(BaseModel):
    """Unknown keys are errors, values are immutable, and floats must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Weight = Annotated[float, Field(ge=0.0, le=100.0)]
Temperature = Annotated[float, Field(gt=0.0, le=100.0)]
