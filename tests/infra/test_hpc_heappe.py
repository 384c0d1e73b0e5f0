"""Unit tests of the HEAppE backend against a fake transport that replaces the server.

The transport replaces only py4heappe's REST client, so the library builds and parses every
request and response as it would against a HEAppE instance; nothing connects anywhere.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from py4heappe.heappe_v6.core.rest import RESTResponse

from bcratos.config import ConfigError, Settings, load_settings
from infra.hpc import BackendError, InvalidParameterError, JobSpec, JobState, TemplateError
from infra.hpc.heappe import HeappeBackend

BASE_URL = "http://127.0.0.1:9/heappe-test"
PASSWORD = "pw-never-logged-7781"
TOKEN = "openid-never-logged-5512"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    post_params: Any


Handler = Callable[[Request], tuple[int, Any]]


class FakeHeappe:
    """Returns responses to py4heappe requests from a table of (method, path) to handlers."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/heappe/UserAndLimitationManagement/AuthenticateUserPassword"): lambda _: (
                200, "session-1"
            ),
            ("POST", "/heappe/UserAndLimitationManagement/AuthenticateUserOpenId"): lambda _: (
                200, "session-oid"
            ),
            ("POST", "/heappe/JobManagement/CreateJob"): lambda _: (
                200, {"Id": 501, "State": 1, "Tasks": [{"Id": 9001, "State": 1}]}
            ),
            ("PUT", "/heappe/JobManagement/SubmitJob"): lambda _: (
                200, {"Id": 501, "State": 2}
            ),
            ("PUT", "/heappe/JobManagement/CancelJob"): lambda _: (200, {"Id": 501, "State": 64}),
            ("GET", "/heappe/JobManagement/CurrentInfoForJob"): lambda _: (
                200, {"Id": 501, "State": 8, "Tasks": [{"Id": 9001, "State": 8}]}
            ),
            ("POST", "/heappe/FileTransfer/UploadFilesToJobExecutionDir"): lambda _: (
                200, [{"FileName": "day12.parquet", "Succeeded": True, "Path": "/x"}]
            ),
            ("POST", "/heappe/FileTransfer/DownloadPartsOfJobFilesFromCluster"): lambda _: (
                200,
                [
                    {"Content": "epoch 1\n", "FileType": 3, "SubmittedTaskInfoId": 9001},
                    {"Content": "warning\n", "FileType": 2, "SubmittedTaskInfoId": 9001},
                ],
            ),
            ("POST", "/heappe/FileTransfer/DownloadFileFromCluster"): lambda _: (
                200, base64.b64encode(b"weights").decode()
            ),
        }

    def request(
        self,
        method: str,
        url: str,
        headers: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> RESTResponse:
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1"
        path = parts.path.removeprefix(urlsplit(BASE_URL).path)
        request = Request(method, path, parse_qs(parts.query), body, post_params)
        self.requests.append(request)
        status, payload = self.routes[(method, path)](request)
        raw = urllib3.HTTPResponse(
            body=json.dumps(payload).encode(),
            status=status,
            headers={"Content-Type": "application/json; charset=utf-8"},
            preload_content=True,
        )
        return RESTResponse(raw)

    def sent(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]


def _settings(tmp_path: Path, **heappe: Any) -> Settings:
    (tmp_path / "inputs").mkdir(exist_ok=True)
    (tmp_path / "inputs" / "day12.parquet").write_bytes(b"PAR1 rows")
    template = {
        "executable": sys.executable,
        "args": ["-m", "fit", "{dataset}", "{epochs}", "{input}"],
        "parameters": {
            "dataset": {"type": "str"},
            "epochs": {"type": "int", "min": 1, "max": 50},
            "input": {"type": "path", "base_dir": "inputs", "must_exist": True},
        },
        "resources": {"cpus": 8, "gpus": 1, "time_limit_min": 90},
    }
    section: dict[str, Any] = {
        "url": BASE_URL,
        "project_id": 3,
        "cluster_id": 2,
        "file_transfer_method_id": 4,
        "username": "bci-service",
        "password": PASSWORD,
        "templates": {
            "fit": {
                "command_template_id": 12,
                "cluster_node_type_id": 7,
                "parameters": {"dataset": "datasetName"},
                "upload": ["input"],
                "download": ["out/model.safetensors"],
            }
        },
        **heappe,
    }
    hpc = {"backend": "heappe", "templates": {"fit": template}, "heappe": section}
    return load_settings(data_dir=tmp_path, hpc=hpc)


JOB = JobSpec("fit", {"dataset": "day12", "epochs": "5", "input": "day12.parquet"})


def test_submit_sends_create_upload_submit_in_order(tmp_path: Path) -> None:
    fake = FakeHeappe()
    backend = HeappeBackend(_settings(tmp_path), transport=fake)

    backend.submit(JOB)

    assert [r.path.rsplit("/", 1)[1] for r in fake.requests] == [
        "AuthenticateUserPassword", "CreateJob", "UploadFilesToJobExecutionDir", "SubmitJob",
    ]


def test_create_job_maps_template_and_parameters(tmp_path: Path) -> None:
    fake = FakeHeappe()
    backend = HeappeBackend(_settings(tmp_path), transport=fake)

    job_id = backend.submit(JOB)

    (create,) = fake.sent("POST", "/heappe/JobManagement/CreateJob")
    assert create.body["SessionCode"] == "session-1"
    specification = create.body["JobSpecification"]
    assert specification["Name"] == job_id
    assert (specification["ProjectId"], specification["ClusterId"]) == (3, 2)
    assert specification["FileTransferMethodId"] == 4
    (task,) = specification["Tasks"]
    assert task["CommandTemplateId"] == 12
    assert task["ClusterNodeTypeId"] == 7
    assert (task["MinCores"], task["MaxCores"], task["GpuCores"]) == (8, 8, 1)
    assert task["WalltimeLimit"] == 90 * 60
    assert task["TemplateParameterValues"] == [
        {"CommandParameterIdentifier": "datasetName", "ParameterValue": "day12"},
        {"CommandParameterIdentifier": "epochs", "ParameterValue": "5"},
        {"CommandParameterIdentifier": "input", "ParameterValue": "day12.parquet"},
    ]


def test_upload_sends_file_content_and_submit_names_job(tmp_path: Path) -> None:
    fake = FakeHeappe()
    HeappeBackend(_settings(tmp_path), transport=fake).submit(JOB)

    (upload,) = fake.sent("POST", "/heappe/FileTransfer/UploadFilesToJobExecutionDir")
    assert upload.query == {"SessionCode": ["session-1"], "JobId": ["501"]}
    expected_file = ("day12.parquet", b"PAR1 rows", "application/octet-stream")
    assert upload.post_params == [("files", expected_file)]
    (submit,) = fake.sent("PUT", "/heappe/JobManagement/SubmitJob")
    assert submit.body == {"SessionCode": "session-1", "CreatedJobInfoId": 501}


def test_invalid_value_rejected_before_any_request(tmp_path: Path) -> None:
    fake = FakeHeappe()
    backend = HeappeBackend(_settings(tmp_path), transport=fake)

    with pytest.raises(InvalidParameterError, match="'epochs'"):
        backend.submit(JobSpec("fit", {"dataset": "day12", "epochs": "5; id", "input": "x"}))

    assert fake.requests == []


def test_template_without_heappe_mapping_rejected(tmp_path: Path) -> None:
    settings = _settings(tmp_path, templates={})
    fake = FakeHeappe()

    with pytest.raises(TemplateError, match=r"\[hpc.heappe.templates.fit\]"):
        HeappeBackend(settings, transport=fake).submit(JOB)

    assert fake.requests == []


def test_identifier_longer_than_heappe_allows_rejected(tmp_path: Path) -> None:
    mapping = {
        "command_template_id": 12,
        "cluster_node_type_id": 7,
        "parameters": {"dataset": "a_much_too_long_identifier_name"},
    }
    fake = FakeHeappe()
    backend = HeappeBackend(_settings(tmp_path, templates={"fit": mapping}), transport=fake)

    with pytest.raises(TemplateError, match="does not fit HEAppE's job model"):
        backend.submit(JOB)


@pytest.mark.parametrize(
    ("heappe_state", "expected"),
    [
        (1, JobState.PENDING),
        (4, JobState.PENDING),
        (8, JobState.RUNNING),
        (16, JobState.SUCCEEDED),
        (32, JobState.FAILED),
        (64, JobState.CANCELLED),
    ],
)
def test_status_maps_heappe_states(tmp_path: Path, heappe_state: int, expected: JobState) -> None:
    fake = FakeHeappe()
    backend = HeappeBackend(_settings(tmp_path), transport=fake)
    job_id = backend.submit(JOB)
    fake.routes[("GET", "/heappe/JobManagement/CurrentInfoForJob")] = lambda _: (
        200, {"Id": 501, "State": heappe_state, "Tasks": [{"Id": 9001, "ErrorMessage": "oom"}]}
    )

    status = backend.status(job_id)

    assert status.state is expected
    assert status.native_id == "501"
    assert "oom" in status.detail
    (info,) = fake.sent("GET", "/heappe/JobManagement/CurrentInfoForJob")
    assert info.query["SubmittedJobInfoId"] == ["501"]


def test_logs_request_stdout_and_stderr_of_each_task(tmp_path: Path) -> None:
    fake = FakeHeappe()
    backend = HeappeBackend(_settings(tmp_path), transport=fake)
    job_id = backend.submit(JOB)

    text = backend.logs(job_id)

    assert text == "epoch 1\n--- stderr ---\nwarning\n"
    (download,) = fake.sent("POST", "/heappe/FileTransfer/DownloadPartsOfJobFilesFromCluster")
    assert download.body["TaskFileOffsets"] == [
        {"SubmittedTaskInfoId": 9001, "FileType": 3, "Offset": 0},
        {"SubmittedTaskInfoId": 9001, "FileType": 2, "Offset": 0},
    ]


def test_cancel_sends_cancel_for_running_job(tmp_path: Path) -> None:
    fake = FakeHeappe()
    backend = HeappeBackend(_settings(tmp_path), transport=fake)
    job_id = backend.submit(JOB)

    backend.cancel(job_id)

    (cancel,) = fake.sent("PUT", "/heappe/JobManagement/CancelJob")
    assert cancel.body == {"SessionCode": "session-1", "SubmittedJobInfoId": 501}


def test_fetch_outputs_writes_decoded_files(tmp_path: Path) -> None:
    fake = FakeHeappe()
    backend = HeappeBackend(_settings(tmp_path), transport=fake)
    job_id = backend.submit(JOB)

    (path,) = backend.fetch_outputs(job_id)

    assert path.read_bytes() == b"weights"
    assert path.relative_to(tmp_path / "jobs" / job_id) == Path("outputs/out/model.safetensors")
    (download,) = fake.sent("POST", "/heappe/FileTransfer/DownloadFileFromCluster")
    assert download.body["RelativeFilePath"] == "out/model.safetensors"


def test_openid_token_used_when_set(tmp_path: Path) -> None:
    fake = FakeHeappe()
    settings = _settings(tmp_path, password=None, openid_token=TOKEN)

    HeappeBackend(settings, transport=fake).submit(JOB)

    (auth,) = fake.sent("POST", "/heappe/UserAndLimitationManagement/AuthenticateUserOpenId")
    assert auth.body["Credentials"]["OpenIdAccessToken"] == TOKEN
    (create,) = fake.sent("POST", "/heappe/JobManagement/CreateJob")
    assert create.body["SessionCode"] == "session-oid"


def test_failed_login_error_and_logs_hold_no_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeHeappe()
    fake.routes[("POST", "/heappe/UserAndLimitationManagement/AuthenticateUserPassword")] = (
        lambda _: (401, {"title": "Unauthorized", "detail": "bad credentials", "status": 401})
    )
    caplog.set_level(logging.DEBUG)

    with pytest.raises(BackendError) as caught:
        HeappeBackend(_settings(tmp_path), transport=fake).submit(JOB)

    assert "HTTP 401" in str(caught.value)
    assert "authenticate user 'bci-service'" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caplog.text


def test_missing_connection_settings_named(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, hpc={"heappe": {"url": BASE_URL}})

    with pytest.raises(BackendError) as caught:
        HeappeBackend(settings, transport=FakeHeappe())

    for key in ["project_id", "cluster_id", "file_transfer_method_id", "username and password"]:
        assert key in str(caught.value)


def test_invalid_heappe_setting_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(data_dir=tmp_path, hpc={"heappe": {"password": [PASSWORD]}})

    assert "hpc.heappe.password" in str(caught.value)
    assert PASSWORD not in str(caught.value)
