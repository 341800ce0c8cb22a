"""One job on a whole slide: pyramid -> tiles -> model -> annotations, SEG and SR on disk.

Called by :class:`node.jobs.execute.JobExecutor` for a model with ``ainode_wsi``. The slide's
levels come from the series' headers (:mod:`node.imaging.slide`), the tiles go through the
same backend as every model (:mod:`node.infer.tiles`), the results are written as the other
jobs' are (:func:`node.jobs.execute.write_results`). The summary records the tissue area, the
tiles and the worker's peak memory (``peak_rss_mb``: bounded by the batch, not the slide).
"""

from __future__ import annotations

import json
import resource
import time
from typing import Any

from pydicom import Dataset

from node.domain import Finding, Job
from node.encode.common import Provenance
from node.encode.outputs import is_urgent
from node.encode.slide import (
    build_annotations,
    build_slide_seg,
    build_slide_sr,
    class_map,
    seg_level,
    summarise,
    tissue_extent,
    tissue_regions,
)
from node.imaging.slide import check_pyramid, describe_slide
from node.infer.backend import Backend
from node.infer.repository import ModelSpec
from node.infer.runner import StageTimes
from node.infer.segments import effective_segments
from node.infer.tiles import run_slide_model
from node.jobs import provenance
from node.jobs.results import JobResult, result_dir, write_results
from node.settings import Pipeline, Settings
from node.store.durable import write_atomically

SLIDE_OUTPUTS = ("ann", "seg", "sr")  # what a slide job can write, in this order


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def execute_slide(job: Job, paths: list[str], spec: ModelSpec, pipeline: Pipeline,
                  backend: Backend, settings: Settings) -> JobResult:
    times = StageTimes()
    started = time.perf_counter()
    slide = describe_slide(paths)
    levels = check_pyramid(slide)
    base = levels[0]
    base_header = slide.header(base)
    times.add("load", started)
    summary = provenance.summary_head(spec, backend.name, base_header)
    summary["provenance"], inputs = provenance.record(spec, pipeline, backend.name, paths)
    target = result_dir(settings.node.data_dir, job.series, job.pipeline)
    target.mkdir(parents=True, exist_ok=True)
    write_atomically(target / "provenance.json", lambda handle: handle.write(json.dumps(
        {**summary["provenance"], "input_files": inputs}, indent=1).encode()))

    results = run_slide_model(levels, spec, backend, times)
    started = time.perf_counter()
    level = seg_level(levels)
    classes = class_map(results, base, level)
    per_class = summarise(results, spec.labels, classes, level)
    findings = {item.label: Finding(present=item.tiles > 0, area_mm2=item.area_mm2,
                                    pixels=item.tiles) for item in per_class}
    summary["labels"] = {name: finding.as_json() for name, finding in findings.items()}
    summary["slide"] = {
        "levels": [[lv.rows, lv.columns, round(lv.spacing * 1000, 4)] for lv in levels],
        "read_level_um": round(results.read_level.spacing * 1000, 4),
        "tissue_area_mm2": round(results.tissue_map.area_mm2, 4),
        "tiles_total": results.tiles_total,
        "tiles_classified": len(results.boxes),
        "classes": {item.label: {"tiles": item.tiles, "share_percent": item.share_percent,
                                 "area_mm2": item.area_mm2} for item in per_class},
        "seg_level": [level.rows, level.columns],
    }
    times.add("postprocess", started)
    urgent = is_urgent(pipeline, findings, spec.threshold)
    summary["urgent"] = urgent
    summary["outputs"] = {}
    objects: dict[str, Dataset] = {}
    if pipeline.mode == "shadow":
        summary["shadow_of"] = pipeline.shadow_of
    else:
        started = time.perf_counter()
        objects = _encode(slide.header(level), base_header, results, classes, per_class,
                          spec, pipeline, Provenance(
                              job.model, spec.exact_version, slide.series_instance_uid,
                              tuple(lv.sop_instance_uid for lv in levels),
                              settings.node.ae_title, job.series.revision,
                              summary["provenance"]["model_sha256"]))
        times.add("encode", started)
    summary["seconds"] = {k: round(v, 3) for k, v in times.seconds.items()}
    summary["peak_rss_mb"] = peak_rss_mb()
    write_atomically(target / "summary.json",
                     lambda handle: handle.write(json.dumps(summary, indent=1).encode()))
    written = write_results(objects, target, summary, urgent)
    summary["result_dir"] = str(target)
    return JobResult(summary, written)


def _encode(level_header: Dataset, base_header: Dataset, results: Any, classes: Any,
            per_class: Any, spec: ModelSpec, pipeline: Pipeline,
            made_by: Provenance) -> dict[str, Dataset]:
    """The pipeline's slide outputs (``ann``, ``seg``, ``sr``; others do not apply)."""
    segments = effective_segments(spec, pipeline)
    objects: dict[str, Dataset] = {}
    wanted = [kind for kind in SLIDE_OUTPUTS if kind in pipeline.outputs]
    if "ann" in wanted and len(results.boxes):
        objects["ann"] = build_annotations(base_header, results, spec.labels, segments, made_by)
    if "seg" in wanted:
        seg = build_slide_seg(level_header, classes, spec.labels, segments, made_by)
        if seg is not None:
            objects["seg"] = seg
    if "sr" in wanted:
        objects["sr"] = build_slide_sr(base_header, list(objects.values()),
                                       results.tissue_map.area_mm2, per_class,
                                       tissue_regions(results, base_header),
                                       tissue_extent(results, base_header), made_by)
    return objects
