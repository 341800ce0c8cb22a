"""Models in Triton layout: `<repo>/<name>/config.pbtxt` and `<repo>/<name>/<v>/model.onnx`.

The same directory serves Triton and the embedded backend. ainode's contract for a model is in
its config.pbtxt ``parameters`` (Triton ignores them): ``ainode_version``, ``ainode_labels`` (JSON
list, index = label value), ``ainode_output_kind`` (``labels`` or ``probabilities``),
``ainode_segments`` (JSON: per label its meaning, ``{category: [scheme, value, meaning],
type: [...], color: [r, g, b]}``, the codes SEG and SR use),
``ainode_preprocess`` (JSON list of MONAI transforms, see :mod:`node.infer.runner`),
optionally ``ainode_sliding_window`` (JSON: ``roi_size``, ``overlap``, ``sw_batch_size``),
``ainode_postprocess`` (MONAI transforms on the label map, e.g. ``RemoveSmallObjects``),
``ainode_min_finding_ml`` (a label smaller than this volume is reported as absent),
``ainode_layout`` (``kji``: the tensor is [slice, row, column] on the voxel grid, the default;
``ras``: MONAI's convention, [x, y, z] with the RAS affine, as MONAI bundles expect, so
``Orientation`` and ``Spacing`` work in patient space), ``ainode_activation`` (``softmax`` or
``sigmoid`` applied to the scores before they are mapped back) and ``ainode_invert``
(``probabilities``: scores mapped back with each transform's own interpolation, then argmax;
``labels``: argmax first, then mapped back with nearest neighbour: MONAI ``Invertd``'s
``nearest_interp``). A ``classification`` model outputs [N, F], one score per finding;
``ainode_labels`` then names the findings (no background) and ``ainode_threshold`` (0.5) is the
probability from which a finding is reported present. A ``heatmap`` model outputs one
probability map per finding ([F, ...] like the input, after ``ainode_activation``), mapped back
to the source grid with each transform's own interpolation; its labels also name findings only,
and a finding is present where its map reaches the threshold.

A model in stages (``ainode_stages``: JSON, role -> the name of another model in the repository,
each a network) is a Python model (``backend: "python"``, ``<v>/model.py``) whose ``run(image,
infer)`` computes what passes from one stage to the next (a crop from the first stage's output,
say) and calls ``infer(role, tensor)`` for each network: on Triton through BLS, so every network
runs on the server; embedded through the worker's own sessions. One file, both backends.

A whole-slide model (``ainode_wsi``, see :class:`node.infer.contract.SlideTiling`) classifies
RGB tiles of a slide: :mod:`node.infer.tiles` feeds it, the ``classification`` labels name the
classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from node.infer.contract import FINDING_KINDS, ContractError, SlideTiling, model_parameters

# the file Triton loads per platform or backend when config.pbtxt names none
DEFAULT_FILES = {"pytorch_libtorch": "model.pt", "pytorch": "model.pt", "python": "model.py"}


class ModelNotFound(LookupError):
    """The model is not in the repository (or its files are incomplete)."""


class ModelConfigError(ValueError):
    """The model's config.pbtxt cannot be used; the message names the model and the key."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton name without TYPE_, e.g. FP32, UINT8
    dims: tuple[int, ...] = ()  # as config.pbtxt declares them; -1: any size


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str  # ainode_version (semantic), for result provenance
    triton_version: int  # numbered directory served
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    output_kind: str
    preprocess: tuple[dict[str, Any], ...]
    postprocess: tuple[dict[str, Any], ...]
    sliding_window: dict[str, Any] | None
    model_file: Path
    min_finding_ml: float = 0.0  # a label smaller than this is reported absent
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> meaning
    layout: str = "kji"
    activation: str = "none"
    invert: str = "probabilities"
    source: dict[str, Any] = field(default_factory=dict)  # provenance, e.g. the bundle imported
    threshold: float = 0.5  # classification: a finding is present from this probability
    stages: dict[str, str] = field(default_factory=dict)  # role -> model: a staged model
    available: tuple[int, ...] = ()  # every numbered version directory of the model
    wsi: SlideTiling | None = None  # a whole-slide model: how it tiles a slide

    @property
    def is_slide_model(self) -> bool:
        return self.wsi is not None

    @property
    def exact_version(self) -> str:
        """How a result names the version: the semantic one, and the numbered directory when
        the repository keeps more than one (``1.1.0 v2``), so that both always agree."""
        if len(self.available) > 1:
            return f"{self.version} v{self.triton_version}"
        return self.version

    @property
    def repository(self) -> Path:
        """The model repository this model was read from."""
        return self.model_file.parent.parent.parent

    @property
    def is_classifier(self) -> bool:
        return self.output_kind == "classification"

    @property
    def is_heatmap(self) -> bool:
        return self.output_kind == "heatmap"

    @property
    def labels_are_findings(self) -> bool:
        """Classifiers and heatmaps name findings only; a label map's label 0 is background."""
        return self.output_kind in FINDING_KINDS

    @property
    def findings(self) -> tuple[str, ...]:
        """What the model can report: its labels, less the background of a label map."""
        return self.labels if self.labels_are_findings else self.labels[1:]


def model_names(repository: Path) -> list[str]:
    """The models of a repository: folders with a config.pbtxt."""
    if not repository.is_dir():
        return []
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def load_model_spec(repository: Path, name: str, version: int | None = None) -> ModelSpec:
    """Read ``name``'s config.pbtxt and locate its numbered ``version`` (default: the
    newest). Its semantic version is ``ainode_versions[N]``, else ``ainode_version`` for the
    newest, else ``N``."""
    model_dir = repository / name
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise ModelNotFound(f"model {name!r} is not in {repository}")
    message: Message = model_config_pb2.ModelConfig()
    try:
        config: Any = text_format.Parse(config_path.read_text(), message)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{name}: config.pbtxt does not parse: {exc}") from exc
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ModelNotFound(f"model {name!r} has no numbered version directory")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise ModelNotFound(f"model {name!r} has no version {chosen} (it has "
                            f"{', '.join(map(str, versions))})")
    platform = config.platform or config.backend
    filename = config.default_model_filename or DEFAULT_FILES.get(platform, "model.onnx")
    model_file = model_dir / str(chosen) / filename
    if not model_file.is_file():
        raise ModelNotFound(f"model {name!r} version {chosen} lacks {filename}")
    try:
        contract = model_parameters(
            {key: str(value.string_value) for key, value in config.parameters.items()}, name)
    except ContractError as exc:
        raise ModelConfigError(str(exc)) from exc
    if platform == "python" and not contract.stages:
        raise ModelConfigError(f"{name}: a Python model runs here only as a staged model "
                               "(ainode_stages)")
    if len(config.input) != 1 or len(config.output) != 1:
        raise ModelConfigError(f"{name}: ainode runs models with one input and one output")

    def tensors(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(t.name, model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_"),
                       tuple(int(d) for d in t.dims))
            for t in items
        )

    return ModelSpec(
        name=name,
        version=contract.versions.get(chosen) or (
            contract.version if chosen == versions[-1] and contract.version else str(chosen)),
        triton_version=chosen,
        platform=platform,
        inputs=tensors(config.input),
        outputs=tensors(config.output),
        labels=contract.labels,
        output_kind=contract.output_kind,
        preprocess=contract.preprocess,
        postprocess=contract.postprocess,
        sliding_window=contract.sliding_window,
        model_file=model_file,
        min_finding_ml=contract.min_finding_ml,
        segments=contract.segments,
        layout=contract.layout,
        activation=contract.activation,
        invert=contract.invert,
        source=contract.source,
        threshold=contract.threshold,
        stages=contract.stages,
        available=tuple(versions),
        wsi=contract.wsi,
    )

