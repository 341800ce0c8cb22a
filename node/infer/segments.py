"""What a model's labels mean: the model declares it (``ainode_segments`` in its
config.pbtxt), a pipeline may override single labels (``pipelines[].segments``).

A label the node would have to encode (a pipeline with outputs) with codes in neither place is
a configuration error found before the node starts, never a job that fails later.
"""

from __future__ import annotations

from pydantic import ValidationError

from node.infer.repository import (
    ModelConfigError,
    ModelNotFound,
    ModelSpec,
    load_model_spec,
    model_names,
)
from node.settings import Pipeline, SegmentSpec, Settings


def model_segments(spec: ModelSpec) -> dict[str, SegmentSpec]:
    """The model's own label meanings, validated; errors name the model and label."""
    meanings: dict[str, SegmentSpec] = {}
    for label, raw in spec.segments.items():
        try:
            meanings[label] = SegmentSpec.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ModelConfigError(
                f"{spec.name}: ainode_segments.{label}.{where}: {first['msg']}"
            ) from exc
    return meanings


def effective_segments(spec: ModelSpec, pipeline: Pipeline) -> dict[str, SegmentSpec]:
    """The model's meanings with the pipeline's overrides on top."""
    return {**model_segments(spec), **pipeline.segments}


def missing_codes(settings: Settings) -> list[str]:
    """One message per label a pipeline would encode without codes (or per model whose
    declared codes are invalid, an output a classification model cannot give, an urgency rule
    naming what the model does not report). A model missing from the repository (a misspelt
    name: every job would fail) is listed; one whose files are incomplete is reported by
    ``ainode models check`` and fails its jobs with that reason."""
    problems: list[str] = []
    repository = settings.inference.model_repository
    present = model_names(repository)
    for index, pipeline in enumerate(settings.pipelines):
        if pipeline.model not in present:
            problems.append(
                f"pipelines.{index} ({pipeline.name}): model {pipeline.model!r} is not in the "
                f"model repository {repository} (it has: {', '.join(present) or 'none'})")
            continue
        try:
            spec = load_model_spec(settings.inference.model_repository, pipeline.model,
                                   pipeline.version)
            known = effective_segments(spec, pipeline)
        except ModelNotFound as exc:
            if pipeline.version is not None:  # a pinned version that is not there
                problems.append(f"pipelines.{index} ({pipeline.name}): {exc}")
            continue
        except ModelConfigError as exc:
            problems.append(f"pipelines.{index} ({pipeline.name}): {exc}")
            continue
        if not pipeline.outputs:
            continue
        if spec.is_slide_model and set(pipeline.outputs) - {"ann", "seg", "sr", "research"}:
            problems.append(
                f"pipelines.{index} ({pipeline.name}): model {spec.name} is a whole-slide "
                f"model: its outputs can be [ann, seg, sr]")
        elif spec.is_classifier and not spec.is_slide_model \
                and set(pipeline.outputs) - {"sr", "research"}:
            problems.append(
                f"pipelines.{index} ({pipeline.name}): model {spec.name} is a classification"
                f" model: it has no image to segment or draw, so its outputs can only be [sr]")
        elif "ann" in pipeline.outputs and not spec.is_slide_model:
            problems.append(
                f"pipelines.{index} ({pipeline.name}): output ann (microscopy annotations) "
                f"needs a whole-slide model; {spec.name} is not one")
        for rule in pipeline.urgent_if:
            subject = rule.finding if rule.finding is not None else rule.label
            if subject not in spec.findings or (
                    rule.finding is not None) != spec.labels_are_findings:
                kind = "finding" if rule.finding is not None else "label"
                problems.append(
                    f"pipelines.{index} ({pipeline.name}): urgent_if names {kind} {subject!r},"
                    f" which model {spec.name} does not report (it reports"
                    f" {'findings' if spec.labels_are_findings else 'labels'}"
                    f" {', '.join(spec.findings)})")
        missing = [label for label in spec.findings if label not in known]
        if missing:
            problems.append(
                f"pipelines.{index} ({pipeline.name}): model {spec.name} declares no codes for"
                f" label(s) {', '.join(missing)}; add them to ainode_segments in its"
                f" config.pbtxt or to pipelines.{index}.segments"
            )
    return problems
