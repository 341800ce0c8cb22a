"""MONAI bundles imported with `ainode models import`, run by the node, compared with the bundle's
own inference (its inference.json through MONAI's bundle machinery) on the shared CT."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml

from node.imaging.volume import Volume, load_series
from node.infer.embedded import EmbeddedBackend
from node.infer.repository import load_model_spec
from node.infer.runner import run_model
from node.infer.triton import TritonBackend
from tests.support.bundles import (
    BUNDLES,
    dice,
    load_network,
    on_node_grid,
    run_bundle_inference,
    spleen_calibration,
    with_weights,
)
from tests.support.dicom_checks import DCIODVFY, dciodvfy_errors, fetch
from tests.support.environment import ROOT, ct_files, free_port, require, wait_for
from tests.support.node import ct_body_node_sections
from tests.support.orthanc import start_orthanc
from tests.support.triton import TritonProcess

pytestmark = pytest.mark.integration
SPLEEN = "spleen_ct_segmentation"
AINODE = str(Path(sys.executable).parent / "ainode")
# onnxruntime and torch may round a score differently at an exact tie between the two classes
MIN_DICE = 0.999


def readme_bundle_example() -> tuple[list[str], list[dict[str, Any]]]:
    """The README's import command and pipeline for a downloaded bundle, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text.split("**MONAI bundles**", 1)[1].split("**Triton**", 1)[0]
    command = section.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    pipelines = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])["pipelines"]
    return shlex.split(command), pipelines


def ainode(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AINODE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ct_volume() -> Volume:
    return load_series(ct_files())


@pytest.fixture(scope="module")
def spleen_bundle(tmp_path_factory: pytest.TempPathFactory, ct_volume: Volume) -> Path:
    return with_weights(SPLEEN, tmp_path_factory.mktemp("bundles"),
                        calibration=spleen_calibration(ct_volume.voxels))


@pytest.fixture(scope="module")
def bundle_labels(spleen_bundle: Path, ct_volume: Volume,
                  tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The bundle's own label map, on the node's voxel grid."""
    dicom_dir = tmp_path_factory.mktemp("ct")
    for path in ct_files():
        (dicom_dir / path.name).symlink_to(path)
    array, affine = run_bundle_inference(spleen_bundle, dicom_dir,
                                         tmp_path_factory.mktemp("bundle-out"))
    labels = on_node_grid(array, affine, ct_volume.affine).astype(np.uint8)
    assert labels.shape == ct_volume.voxels.shape
    share = float((labels == 1).mean())
    assert 0.05 < share < 0.95, f"seeded weights label {share:.0%} spleen: not a useful check"
    return labels


@pytest.fixture(scope="module")
def imported(spleen_bundle: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, Path, str]:
    """The README's import command on the bundle, into a node configuration's repository."""
    command, _pipelines = readme_bundle_example()
    assert command[:3] == ["ainode", "models", "import"], command
    base = tmp_path_factory.mktemp("site")
    repository = base / "model_repository"
    config = base / "node.yaml"
    config.write_text(yaml.safe_dump({"inference": {"model_repository": str(repository)}}))
    args = [str(spleen_bundle) if a.endswith(SPLEEN) else a for a in command[3:]]
    args = [str(config) if a == "config/node.yaml" else a for a in args]
    result = ainode("models", "import", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return repository, config, result.stdout


def test_import_writes_a_complete_model_directory(imported: tuple[Path, Path, str]) -> None:
    repository, _config, output = imported
    model = repository / SPLEEN
    assert re.search(r"imported spleen_ct_segmentation version 0\.5\.9 \(onnxruntime_onnx\).*"
                     r" in \d+\.\d s; labels: spleen", output.replace("\n", " ")), output
    assert {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()} == {
        "config.pbtxt", "1/model.onnx", "configs/gpu.pbtxt", "bundle/metadata.json",
        "bundle/LICENSE", "bundle/README.md"}
    spec = load_model_spec(repository, SPLEEN)
    assert spec.labels == ("background", "spleen")
    assert spec.segments["spleen"]["type"] == ["SCT", "78961009", "Spleen"]
    assert spec.layout == "ras" and spec.activation == "softmax"
    assert spec.invert == "probabilities"  # Invertd(nearest_interp=false) before argmax
    assert [t["transform"] for t in spec.preprocess] == [
        "Orientation", "Spacing", "ScaleIntensityRange"]
    assert spec.preprocess[1]["pixdim"] == [1.5, 1.5, 2.0]
    assert spec.sliding_window == {"roi_size": [96, 96, 96], "sw_batch_size": 4,
                                   "overlap": 0.5, "mode": "constant"}
    assert spec.source["bundle_version"] == "0.5.9"
    assert "not to be used for diagnostic purposes" in spec.source["intended_use"]


def test_readme_bundle_pipeline_runs_through_the_node_like_the_bundle(
    imported: tuple[Path, Path, str], bundle_labels: np.ndarray, node_factory: Any,
    tmp_path: Path,
) -> None:
    """The README's pipeline for the imported bundle: `models check` passes, then the CT pushed
    by Orthanc comes back as a SEG equal to the bundle's own inference, and an SR; both pass
    dciodvfy and name the model and its version."""
    require(DCIODVFY)
    repository, config, _ = imported
    _command, pipelines = readme_bundle_example()
    check_config = config.with_name("check.yaml")
    check_config.write_text(yaml.safe_dump({"inference": {"model_repository": str(repository)},
                                            "pipelines": pipelines,
                                            "peers": [{"name": "PACS", "ae_title": "ORTHANC",
                                                       "host": "127.0.0.1", "port": 104}]}))
    checked = ainode("models", "check", "--config", str(check_config))
    assert checked.returncode == 0 and "ready" in checked.stdout, checked.stdout + checked.stderr
    assert ainode("config", "check", str(check_config)).returncode == 0

    http_port, dicom_port = free_port(), free_port()
    sections = ct_body_node_sections(dicom_port)
    sections["inference"] = {"model_repository": str(repository)}
    sections["pipelines"] = pipelines
    node = node_factory(**sections).start()
    with start_orthanc(tmp_path, http_port, dicom_port, node.port) as pacs:
        study = pacs.upload(ct_files())
        pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                          "Synchronous": True}))
        assert wait_for(lambda: node.query(
            "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(2,)], 300, 0.5), (
            node.query("SELECT * FROM jobs"), node.log()[-3000:])
        study_uid = str(pydicom.dcmread(ct_files()[0], stop_before_pixels=True)
                        .StudyInstanceUID)
        found = pacs.series_by_modality(study_uid)
        (seg_ds,) = fetch(pacs, study_uid, found["SEG"][0])
        (sr_ds,) = fetch(pacs, study_uid, found["SR"][0])
    for dataset in (seg_ds, sr_ds):
        assert dciodvfy_errors(dataset, tmp_path) == [], dataset.SOPClassUID.name
    for dataset in (seg_ds, sr_ds):  # the result names the model and the bundle's version
        assert f"{SPLEEN} 0.5.9" in list(dataset.SoftwareVersions)
    (segment,) = seg_ds.SegmentSequence
    assert segment.SegmentAlgorithmName == SPLEEN
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "78961009"
    volume = load_series(ct_files())
    uids = [ref.sop_instance_uid for ref in volume.slices]
    masks = hd.seg.Segmentation.from_dataset(seg_ds).get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True)
    delivered = masks[..., 0] > 0
    expected = bundle_labels == 1
    score = dice(delivered, expected)
    print(f"\nspleen bundle, node (embedded, via Orthanc) vs bundle: Dice {score:.6f}, "
          f"{int((delivered != expected).sum())} of {expected.size} voxels differ")
    assert score >= MIN_DICE


def test_imported_bundle_on_triton_equals_the_bundle(
    imported: tuple[Path, Path, str], bundle_labels: np.ndarray, ct_volume: Volume,
    tmp_path: Path,
) -> None:
    """A real tritonserver serving the imported repository gives the bundle's label map."""
    repository, _config, _ = imported
    if not (ROOT / ".triton-venv").exists():
        pytest.fail("no .triton-venv; `make triton-up` installs it")
    server = TritonProcess(tmp_path / "triton", free_port(), free_port(), repository)
    server.up()
    backend = TritonBackend(server.grpc_url)
    try:
        spec = load_model_spec(repository, SPLEEN)
        backend.check(spec)
        labels = run_model(ct_volume, spec, backend)
    finally:
        backend.close()
        server.crash()
    score = dice(labels == 1, bundle_labels == 1)
    print(f"\nspleen bundle, node (Triton) vs bundle: Dice {score:.6f}")
    assert score >= MIN_DICE


def _sub_volume(volume: Volume, first: int, last: int) -> Volume:
    from dataclasses import replace

    affine = volume.affine.copy()
    affine[:3, 3] += first * affine[:3, 2]
    return replace(volume, voxels=volume.voxels[first:last], affine=affine,
                   slices=volume.slices[first:last], headers=volume.headers[first:last])


def test_torchscript_import_matches_the_onnx_import(
    spleen_bundle: Path, imported: tuple[Path, Path, str], ct_volume: Volume, tmp_path: Path,
) -> None:
    repository, config, _ = imported
    result = ainode("models", "import", str(spleen_bundle), "--name", "spleen_ts",
                    "--format", "torchscript", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    torchscript = load_model_spec(repository, "spleen_ts")
    assert torchscript.platform == "pytorch_libtorch"
    assert torchscript.model_file.name == "model.pt"
    part = _sub_volume(ct_volume, 40, 100)
    backend = EmbeddedBackend()
    from_ts = run_model(part, torchscript, backend)
    from_onnx = run_model(part, load_model_spec(repository, SPLEEN), backend)
    assert dice(from_ts == 1, from_onnx == 1) >= MIN_DICE


def test_a_bundle_shipping_model_ts_is_imported_as_distributed(
    spleen_bundle: Path, imported: tuple[Path, Path, str], ct_volume: Volume, tmp_path: Path,
) -> None:
    """A bundle with ``models/model.ts`` (as the Model Zoo ships them) and no ``model.pt``:
    the default import keeps the TorchScript file byte for byte (no export), and it gives the
    exported ONNX model's labels."""
    import torch

    from node.infer.embedded import torchscript_api

    repository, config, _ = imported
    bundle = tmp_path / "zoo_bundle"
    shutil.copytree(spleen_bundle, bundle)
    network = load_network(bundle)
    with torchscript_api():
        traced = torch.jit.trace(network, torch.rand(1, 1, 96, 96, 96), check_trace=False)
        torch.jit.save(traced, str(bundle / "models" / "model.ts"))
    (bundle / "models" / "model.pt").unlink()
    result = ainode("models", "import", str(bundle), "--name", "spleen_zoo_ts",
                    "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(pytorch_libtorch)" in result.stdout
    spec = load_model_spec(repository, "spleen_zoo_ts")
    assert spec.model_file.read_bytes() == (bundle / "models" / "model.ts").read_bytes()
    part = _sub_volume(ct_volume, 40, 100)
    backend = EmbeddedBackend()
    from_ts = run_model(part, spec, backend)
    from_onnx = run_model(part, load_model_spec(repository, SPLEEN), backend)
    assert dice(from_ts == 1, from_onnx == 1) >= MIN_DICE


def _bundle_copy(spleen_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "edited_bundle"
    shutil.copytree(spleen_bundle, copy)
    return copy


def test_a_bundle_the_node_cannot_reproduce_is_refused_with_every_reason(
    spleen_bundle: Path, tmp_path: Path
) -> None:
    bundle = _bundle_copy(spleen_bundle, tmp_path)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    inference["preprocessing"]["transforms"].insert(
        4, {"_target_": "HistogramNormalized", "keys": "@image_key", "num_bins": 64})
    inference["inferer"]["sigma_scale"] = 0.2  # supported: kept
    inference["inferer"]["roi_weight_map"] = None  # not supported
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference))
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] = "splenule"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    config = tmp_path / "node.yaml"
    repository = tmp_path / "repo"
    config.write_text(yaml.safe_dump({"inference": {"model_repository": str(repository)}}))

    result = ainode("models", "import", str(bundle), "--config", str(config))
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "HistogramNormalized is not one the node can reproduce" in message
    assert "SlidingWindowInferer option(s) roi_weight_map are not supported" in message
    assert "no SEG/SR codes for label(s) splenule" in message
    assert not repository.exists() or not any(repository.iterdir())

    # with codes for the new label (and the unsupported options removed) it imports
    inference["preprocessing"]["transforms"].pop(4)
    del inference["inferer"]["roi_weight_map"]
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference))
    codes = tmp_path / "codes.yaml"
    codes.write_text(yaml.safe_dump({"splenule": {
        "category": ["SCT", "123037004", "Anatomical Structure"],
        "type": ["SCT", "78961009", "Spleen"], "color": [200, 100, 200]}}))
    archive = tmp_path / "splenule_bundle.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in bundle.rglob("*"):
            out.write(path, Path("splenule_bundle") / path.relative_to(bundle))
    result = ainode("models", "import", str(archive), "--codes", str(codes),
                    "--config", str(config))
    assert result.returncode == 0, result.stderr
    spec = load_model_spec(repository, "splenule_bundle")
    assert spec.labels == ("background", "splenule")
    assert spec.sliding_window is not None and spec.sliding_window["sigma_scale"] == 0.2
    # an existing model is not replaced unless asked
    again = ainode("models", "import", str(archive), "--codes", str(codes),
                   "--config", str(config))
    assert again.returncode == 1 and "--replace" in again.stderr
    assert ainode("models", "import", str(archive), "--codes", str(codes), "--replace",
                  "--config", str(config)).returncode == 0


def test_a_bundle_describing_its_output_as_labels_is_imported(spleen_bundle: Path,
                                                                tmp_path: Path) -> None:
    """Issue 24 §5: Model Zoo bundles write ``"format": "labels"`` as well as
    ``"segmentation"``; both import to the same model."""
    bundle = _bundle_copy(spleen_bundle, tmp_path)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    metadata["network_data_format"]["outputs"]["pred"]["format"] = "labels"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    config = tmp_path / "node.yaml"
    repository = tmp_path / "repo"
    config.write_text(yaml.safe_dump({"inference": {"model_repository": str(repository)}}))
    result = ainode("models", "import", str(bundle), "--name", "spleen_labels",
                    "--config", str(config))
    assert result.returncode == 0, result.stderr
    spec = load_model_spec(repository, "spleen_labels")
    assert spec.labels == ("background", "spleen") and spec.output_kind == "probabilities"


def test_the_breast_density_classification_bundle_is_refused_with_its_reasons(
    tmp_path: Path,
) -> None:
    """The 2-D classification bundle: RGB JPEG input, a classification output, a network from
    torchvision and no weights here. The import names each problem and writes nothing."""
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"inference": {"model_repository": str(tmp_path / "r")}}))
    result = ainode("models", "import", str(BUNDLES / "breast_density_classification"),
                    "--config", str(config))
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "EnsureChannelFirstd(channel_dim=2)" in message
    assert "the network takes 3 input channels" in message
    assert "output format 'labels'" in message or "only segmentation bundles" in message
    assert "Resized is not one the node can reproduce" in message
    assert "no weights" in message
    assert not (tmp_path / "r").exists()


WHOLE_BODY = "wholeBody_ct_segmentation"


@pytest.mark.slow
def test_whole_body_bundle_low_resolution_imports_and_runs_like_the_bundle(tmp_path: Path
                                                                          ) -> None:
    """The 105-label SegResNet bundle in its 3 mm mode (``--override
    displayable_configs#highres=false``: its own switch, which also picks
    ``models/model_lowres.pt``), labels the built-in table lacks coded in a --codes file (local
    ``99AINODE`` codes here: a site would use SNOMED CT). NormalizeIntensity(nonzero),
    ScaleIntensity(-1, 1), gaussian blending with replicate padding, and argmax before a
    nearest-neighbour Invertd: the node's label map equals the bundle's own inference. On
    60 of the CT's 134 slices (lung bases to kidneys' upper poles, 177 mm), which keeps the
    comparison and a third of the time of two CPU runs of the network."""
    from node.bundles.codes import known_codes

    files = ct_files()[40:100]
    ct_volume = load_series(files)

    bundle = with_weights(WHOLE_BODY, tmp_path / "bundles", weights="model_lowres.pt")
    channels = json.loads((bundle / "configs" / "metadata.json").read_text())[
        "network_data_format"]["outputs"]["pred"]["channel_def"]
    codes = {name: known_codes(name) or {
        "category": ["SCT", "123037004", "Anatomical Structure"],
        "type": ["99AINODE", f"WB{index}", name.replace("_", " ")], "color": [200, 200, 200]}
        for index, name in channels.items() if index != "0"}
    codes_file = tmp_path / "codes.yaml"
    codes_file.write_text(yaml.safe_dump(codes))
    config = tmp_path / "node.yaml"
    repository = tmp_path / "repo"
    config.write_text(yaml.safe_dump({"inference": {"model_repository": str(repository)}}))
    refused = ainode("models", "import", str(bundle), "--override",
                     "displayable_configs#highres=false", "--config", str(config))
    assert refused.returncode == 1
    assert "no SEG/SR codes for label(s)" in refused.stderr and "more" in refused.stderr
    result = ainode("models", "import", str(bundle), "--override",
                    "displayable_configs#highres=false", "--codes", str(codes_file),
                    "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    spec = load_model_spec(repository, WHOLE_BODY)
    assert len(spec.labels) == 105 and spec.invert == "labels"
    assert spec.preprocess[1] == {"transform": "Spacing", "pixdim": [3.0, 3.0, 3.0],
                                  "mode": "bilinear"}
    assert [t["transform"] for t in spec.preprocess][2:] == ["NormalizeIntensity",
                                                             "ScaleIntensity"]
    assert spec.sliding_window is not None and spec.sliding_window["mode"] == "gaussian"
    assert spec.sliding_window["padding_mode"] == "replicate"

    labels = run_model(ct_volume, spec, EmbeddedBackend())
    dicom_dir = tmp_path / "ct"
    dicom_dir.mkdir()
    for path in files:
        (dicom_dir / path.name).symlink_to(path)
    array, affine = run_bundle_inference(bundle, dicom_dir, tmp_path / "out",
                                         {"displayable_configs#highres": False})
    theirs = on_node_grid(array, affine, ct_volume.affine).astype(np.uint8)
    agreement = float((labels == theirs).mean())
    present = [v for v in range(1, 105) if (theirs == v).sum() >= 1000]
    worst = min(dice(labels == v, theirs == v) for v in present)
    print(f"\nwholeBody (3 mm), node vs bundle: {agreement:.6f} of voxels agree, "
          f"{len(present)} labels with >= 1000 voxels, lowest Dice {worst:.4f}")
    assert len(present) >= 3, "seeded weights label too little to compare"
    assert agreement >= 0.999 and worst >= 0.99
