"""The model contract: the ``ainode_*`` parameters of a model's config.pbtxt (Triton ignores
them), validated like the node's settings. Triton gives every parameter as a string; the
structured ones are JSON. An ``ainode_`` parameter the node does not know is refused, so a
misspelt one is found when the model is checked, not by a result that is silently wrong."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PREFIX = "ainode_"
FINDING_KINDS = ("classification", "heatmap")
TEXT = {"version", "output_kind", "layout", "activation", "invert", "input_kind"}  # the rest: JSON


class ContractError(ValueError):
    """A parameter is not what the contract says (its message names the parameter)."""


class SlideTiling(BaseModel):
    """How a whole-slide model sees a slide (``ainode_wsi``): RGB tiles of ``tile_size``
    pixels at ``pixel_spacing_um`` (or the objective's ``magnification``, 10 µm / it), ``overlap``
    pixels shared by neighbours, only where there is tissue (``tissue_only``: at least
    ``min_tissue`` of the tile) and at most ``batch_tiles`` tiles decoded at once. The network
    gets [N, 3, tile_size, tile_size] float32 RGB in [0, 1] and returns [N, F] scores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pixel_spacing_um: float | None = Field(None, gt=0)
    magnification: float | None = Field(None, gt=0)
    tile_size: int = Field(224, ge=8, le=4096)
    overlap: int = Field(0, ge=0)
    tissue_only: bool = True
    min_tissue: float = Field(0.25, ge=0, le=1)
    batch_tiles: int = Field(64, ge=1, le=4096)

    @property
    def spacing_mm(self) -> float:
        """The pixel spacing the model asks for, in mm (a 10x objective: 1 µm)."""
        if self.pixel_spacing_um is not None:
            return self.pixel_spacing_um / 1000.0
        return 0.01 / (self.magnification or 10.0)

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, value: int, info: Any) -> int:
        if value >= info.data.get("tile_size", 224):
            raise ValueError("overlap must be smaller than tile_size")
        return value


class ModelParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str | None = Field(None, description="semantic version, for result provenance")
    versions: dict[int, str] = Field(
        default_factory=dict, description="semantic version of each numbered version directory "
                                          "kept beside the newest (which has ``version``)")
    labels: tuple[str, ...] = Field((), description="index = label value (or the findings)")
    output_kind: Literal["labels", "probabilities", "classification", "heatmap"] = \
        "probabilities"
    segments: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per label its meaning: category, type, colour")
    preprocess: tuple[dict[str, Any], ...] = ()  # MONAI transforms (node.infer.runner)
    postprocess: tuple[dict[str, Any], ...] = ()  # MONAI transforms on the label map
    sliding_window: dict[str, Any] | None = None  # roi_size, overlap, sw_batch_size
    min_finding_ml: float = Field(0.0, ge=0)  # a label smaller than this is reported absent
    layout: Literal["kji", "ras"] = "kji"
    activation: Literal["none", "softmax", "sigmoid"] = "none"
    invert: Literal["probabilities", "labels"] = "probabilities"
    source: dict[str, Any] = Field(default_factory=dict)  # provenance (the bundle imported)
    threshold: float = Field(0.5, ge=0, le=1)  # a finding is present from this probability
    input_kind: str | None = None  # what the input is (hounsfield, mr_signal): documentation
    stages: dict[str, str] = Field(
        default_factory=dict, description="a staged model's networks: role -> model name")
    wsi: SlideTiling | None = Field(
        None, description="a whole-slide model: a classifier of tiles (see SlideTiling)")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        return tuple(str(label) for label in value) if isinstance(value, list) else value

    @property
    def findings(self) -> tuple[str, ...]:
        return self.labels if self.output_kind in FINDING_KINDS else self.labels[1:]


def model_parameters(parameters: Mapping[str, str], model: str) -> ModelParameters:
    """The contract from config.pbtxt's parameters (key -> string value); raises
    :class:`ContractError` naming the model and the parameter."""
    raw: dict[str, Any] = {}
    for key, text in parameters.items():
        if not key.startswith(PREFIX):
            continue  # Triton's own, or another tool's
        name = key.removeprefix(PREFIX)
        if name in TEXT:
            raw[name] = text
            continue
        try:
            raw[name] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{model}: parameter {key} is not valid JSON") from exc
    try:
        contract = ModelParameters.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = PREFIX + ".".join(str(part) for part in first["loc"])
        raise ContractError(f"{model}: {where}: {first['msg']}") from exc
    if contract.wsi is not None and contract.output_kind != "classification":
        raise ContractError(f"{model}: ainode_wsi needs ainode_output_kind classification "
                            "(one score per class for each tile)")
    unknown = sorted(set(contract.segments) - set(contract.findings))
    if unknown:
        raise ContractError(f"{model}: ainode_segments names unknown labels {', '.join(unknown)}")
    return contract
