"""The manifest's typed view: the JSON keeps its shape (old outputs resume), the fingerprint's
comparison names what differs, and the light modules stay free of TensorFlow."""
import json
import subprocess
import sys

from conftest import DEMO, ROOT, make_config
from estimator_vgg.manifest import Fingerprint, Manifest, PartRecord, RunRecord

# The fingerprint of configs/demo.yaml's settings as release 0.1.0 wrote it (keys and order).
OLD_FINGERPRINT = {
    "model": "vgg16/fc7", "precision": "float32",
    "weights_sha256": "cae4d7a6635f7cbc0f5a2cc9e16c3c08d30d6812e212fa82cf9971ae0f6252a2",
    "synthetic_weights": True,
    "preprocessing": {"recipe": "decode-rgb, resize, caffe-bgr-mean/v1", "resize": "center_crop",
                      "antialias": True, "image_size": 224,
                      "mean_bgr": [103.939, 116.779, 123.68]},
    "output_format": "parquet", "input_dir": str(DEMO)}


def _located(cfg):
    from estimator_vgg.weights import locate
    return locate(cfg.model)


def test_the_fingerprint_of_a_job_is_the_json_earlier_releases_wrote(tmp_path):
    # earlier releases decoded only what TensorFlow decodes: input.fallback_decoder=none
    cfg = make_config(tmp_path, input={"fallback_decoder": "none"})
    fp = Fingerprint.of(cfg, _located(cfg))
    assert json.dumps(fp.to_dict()) == json.dumps(OLD_FINGERPRINT)
    assert Fingerprint.from_dict(OLD_FINGERPRINT) == fp
    # the default, Pillow for other formats, is recorded, and tells how to resume an old one
    now = Fingerprint.of(make_config(tmp_path), _located(cfg))
    assert now.to_dict()["preprocessing"]["fallback_decoder"] == "pillow"
    assert Fingerprint.from_dict(OLD_FINGERPRINT).differences(now) == [
        "preprocessing.fallback_decoder: 'none' in the output, 'pillow' now"]
    assert (Fingerprint.from_dict(OLD_FINGERPRINT).resume_overrides(now)
            == ["input.fallback_decoder=none"])


def test_an_option_recorded_only_when_on_reads_as_off_in_old_outputs(tmp_path):
    on = make_config(tmp_path, preprocess={"jpeg_dct_scaling": True},
                     input={"fallback_decoder": "none"})
    fp_on = Fingerprint.of(on, _located(on))
    assert fp_on.to_dict()["preprocessing"]["jpeg_dct_scaling"] is True
    old = Fingerprint.from_dict(OLD_FINGERPRINT)
    assert old.differences(fp_on) == [
        "preprocessing.jpeg_dct_scaling: False in the output, True now"]


def test_a_missing_or_unknown_key_makes_fingerprints_differ():
    no_precision = {k: v for k, v in OLD_FINGERPRINT.items() if k != "precision"}
    assert (Fingerprint.from_dict(no_precision).differences(Fingerprint.from_dict(OLD_FINGERPRINT))
            == ["precision: None in the output, 'float32' now"])
    newer = dict(OLD_FINGERPRINT, decoder="pillow")
    assert Fingerprint.from_dict(newer) != Fingerprint.from_dict(OLD_FINGERPRINT)
    assert Fingerprint.from_dict(newer).to_dict() == newer  # kept, not dropped


def test_a_manifest_round_trips_through_its_json():
    d = {"manifest_version": 1, "fingerprint": OLD_FINGERPRINT, "status": "complete",
         "parts": [{"index": 0, "features": 5, "errors": 2}],
         "runs": [{"started": "2026-11-27T10:00:00+0000", "command": ["x"], "versions": {},
                   "devices": ["/device:CPU:0"], "new_files": 7, "seconds": 1.5,
                   "executor": "ray", "shards": [{"parts": ["part-00000"]}]}],
         "config": {"input": {"dir": "/imgs"}}, "totals": {"files": 7}}
    m = Manifest.from_dict(d)
    assert m.parts == [PartRecord(0, 5, 2)] and m.parts[0].name == "part-00000"
    assert m.runs[0].details == {"executor": "ray", "shards": [{"parts": ["part-00000"]}]}
    assert isinstance(m.runs[0], RunRecord) and m.input_dir.name == "imgs"
    assert json.loads(m.to_json()) == d


def test_light_modules_do_not_import_tensorflow():
    from estimator_vgg import LIGHT_MODULES

    code = ("import sys, importlib\n"
            f"for m in {LIGHT_MODULES!r}:\n"
            "    importlib.import_module('estimator_vgg.' + m)\n"
            "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
