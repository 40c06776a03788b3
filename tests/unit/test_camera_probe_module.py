"""The halfbridge_camera_probe module, fed its arguments as Ansible does."""

from __future__ import annotations

import importlib.util
import json

import pytest
from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args

from tests.support.inventory import ROOT
from tests.support.media import make_clip

spec = importlib.util.spec_from_file_location(
    "halfbridge_camera_probe", ROOT / "plugins" / "modules" / "halfbridge_camera_probe.py"
)
probe_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_module)


def run(args: dict, capsys) -> dict:
    # A module process starts with no warnings; several runs in one test process must too.
    warnings._global_warnings.clear()
    with patch_module_args(args), pytest.raises(SystemExit):
        probe_module.main()
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # Once controller code is imported in the test process (other tests do), ansible-core
    # shows module warnings on the controller's display instead of returning them.
    result["_shown"] = json.dumps(result.get("warnings")) + captured.err
    return result


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return make_clip(tmp_path_factory.mktemp("probe") / "camera.ts", size="640x360", seconds=6, gop=50)


def test_a_reachable_camera_reports_its_stream(clip, capsys):
    result = run({"url": clip, "gop_seconds": 6}, capsys)
    assert result["reachable"] is True
    assert result["changed"] is False
    assert (result["codec"], result["width"], result["height"], result["fps"]) == ("h264", 640, 360, 25.0)
    assert result["keyframe_interval"] == pytest.approx(2.0, abs=0.05)
    assert result["audio"] is None


def test_check_mode_probes_all_the_same(clip, capsys):
    result = run({"url": clip, "gop_seconds": 0, "_ansible_check_mode": True}, capsys)
    assert result["reachable"] is True and result["keyframe_interval"] is None


def test_an_unreachable_camera_is_a_warning_not_a_failure(capsys):
    result = run({"url": "rtsp://127.0.0.1:9/stream", "username": "rec", "password": "s3cret-pw", "timeout": 2}, capsys)
    assert result.get("failed") is not True
    assert result["reachable"] is False
    assert "rtsp://127.0.0.1:9/stream" in result["error"]
    assert "Connection refused" in result["error"]
    assert "did not answer" in result["_shown"], result
    assert "s3cret-pw" not in json.dumps(result)


def test_credentials_are_put_in_the_url_escaped():
    assert (
        probe_module.with_credentials("rtsp://198.18.10.20:8554/stream", "syn rec", "p@ss:w/rd")
        == "rtsp://syn%20rec:p%40ss%3Aw%2Frd@198.18.10.20:8554/stream"
    )
    assert probe_module.with_credentials("rtsp://h/s", None, None) == "rtsp://h/s"


def test_the_url_is_required(capsys):
    result = run({}, capsys)
    assert result["failed"] is True
    assert "url" in result["msg"]


def test_documentation_matches_the_argument_spec():
    import yaml

    documented = yaml.safe_load(probe_module.DOCUMENTATION)["options"]
    yaml.safe_load(probe_module.EXAMPLES)
    yaml.safe_load(probe_module.RETURN)
    with patch_module_args({"url": "rtsp://h/s"}):
        spec = probe_module.build_module().argument_spec
    assert set(documented) == set(spec)
    for name, option in documented.items():
        assert option.get("type", "str") == spec[name].get("type", "str"), name
        assert option.get("default") == spec[name].get("default"), name
