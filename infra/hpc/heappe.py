"""The ``heappe`` backend: jobs go to a HEAppE middleware instance through ``py4heappe``.

HEAppE runs only command templates that its administrators declared on the cluster, which
matches our own model. A job here is checked against our template first (types, patterns,
ranges, base folders), then its values are sent as the parameter values of the HEAppE command
template named in ``hpc.heappe.templates``. Our template's executable and arguments are not
sent: HEAppE's template decides what runs.

Steps of a submission: authenticate (once per backend object), create the job, upload the
files of the template's ``upload`` parameters to the job's execution directory, submit.
``status`` reads the job's current info, ``logs`` downloads standard output and error of each
task, ``fetch_outputs`` downloads the template's ``download`` files into the job folder, and
``cancel`` cancels the job.

The HTTP layer is the py4heappe ``ApiClient``'s REST client. A test passes a ``transport`` that
returns responses in place of a server, so the library builds and reads every request as it
would against a real instance.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final, Protocol, TypeVar

from py4heappe.heappe_v6.core import (
    ApiClient,
    AuthenticateUserOpenIdModel,
    AuthenticateUserPasswordModel,
    CancelJobModel,
    CommandTemplateParameterValueExt,
    Configuration,
    CreateJobByProjectModel,
    DownloadFileFromClusterModel,
    DownloadPartsOfJobFilesFromClusterModel,
    FileTransferApi,
    JobManagementApi,
    JobSpecificationExt,
    OpenIdCredentialsExt,
    PasswordCredentialsExt,
    SubmitJobModel,
    TaskFileOffsetExt,
    TaskSpecificationExt,
    UserAndLimitationManagementApi,
)
from py4heappe.heappe_v6.core.exceptions import ApiException
from pydantic import ValidationError

from bcratos.config import HeappeSettings, HeappeTemplateSettings, Settings
from infra.hpc.backend import Backend, BackendJobId, JobState, JobStatus
from infra.hpc.exceptions import BackendError, TemplateError
from infra.hpc.jobfiles import JobFolder, JobRecord, utc_now_iso
from infra.hpc.templates import Command, JobSpec, instantiate

logger = logging.getLogger(__name__)

HEAPPE_STATES: Final[Mapping[int, JobState]] = {
    1: JobState.PENDING,  # Configuring
    2: JobState.PENDING,  # Submitted
    4: JobState.PENDING,  # Queued
    8: JobState.RUNNING,  # Running
    16: JobState.SUCCEEDED,  # Finished
    32: JobState.FAILED,  # Failed
    64: JobState.CANCELLED,  # Canceled
    128: JobState.PENDING,  # WaitingForServiceAccount
    256: JobState.CANCELLED,  # Deleted
}
"""HEAppE ``JobState`` values (flags of HEAppE.DomainObjects.JobManagement.JobInformation,
HEAppE 6) to job states."""

STANDARD_ERROR_FILE: Final = 2
STANDARD_OUTPUT_FILE: Final = 3
"""HEAppE ``SynchronizableFilesExt`` values of a task's standard error and output."""

_Result = TypeVar("_Result")


class HeappeTransport(Protocol):
    """The request method of py4heappe's ``rest.RESTClientObject``, which sends HTTP requests."""

    def request(
        self,
        method: str,
        url: str,
        headers: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> Any: ...


class HeappeBackend(Backend):
    """Runs jobs through HEAppE's job management and file transfer API (version 6)."""

    name = "heappe"

    def __init__(self, settings: Settings, *, transport: HeappeTransport | None = None) -> None:
        super().__init__(settings)
        heappe = settings.hpc.heappe
        _require_connection_settings(heappe)
        self._api = ApiClient(Configuration(host=heappe.url))
        if transport is not None:
            self._api.rest_client = transport
        self._session_code: str | None = None

    def submit(self, job: JobSpec) -> BackendJobId:
        command = instantiate(self.settings, job)
        mapping = self._mapping(command.template)
        folder = JobFolder.create(self.settings, command.template)
        folder.write_record(
            JobRecord(
                job_id=folder.job_id,
                backend=self.name,
                template=command.template,
                argv=list(command.argv),
                parameters=dict(command.parameters),
                submitted_at=utc_now_iso(),
            )
        )

        request = build_create_job_request(
            self.settings.hpc.heappe, folder.job_id, command, mapping, self._session()
        )
        created = self._call(
            "create the job",
            lambda: JobManagementApi(self._api).heappe_job_management_create_job_post(
                create_job_by_project_model=request, _request_timeout=self._timeout
            ),
        )
        heappe_id = int(created.id)
        task_ids = [int(task.id) for task in created.tasks or []]
        folder.update_record(native_id=str(heappe_id), extra={"task_ids": task_ids})

        self._upload(heappe_id, command, mapping)
        self._call(
            "submit the job",
            lambda: JobManagementApi(self._api).heappe_job_management_submit_job_put(
                submit_job_model=SubmitJobModel(
                    session_code=self._session(), created_job_info_id=heappe_id
                ),
                _request_timeout=self._timeout,
            ),
        )
        logger.info(
            "submitted job %s (template %s) as HEAppE job %d", folder.job_id, command.template,
            heappe_id,
        )
        return BackendJobId(folder.job_id)

    def status(self, job_id: str) -> JobStatus:
        record = JobFolder.existing(self.settings, job_id).read_record()
        info = self._job_info(record)
        state_value = int(info.state) if info.state is not None else None
        state = HEAPPE_STATES.get(state_value) if state_value is not None else None
        if state is None:
            raise BackendError(
                f"job {job_id}: HEAppE reports the unknown state {state_value!r}; expected one "
                f"of {sorted(HEAPPE_STATES)}"
            )
        errors = [task.error_message for task in info.tasks or [] if task.error_message]
        detail = f"HEAppE state {state_value}" + (f": {'; '.join(errors)}" if errors else "")
        # HEAppE reports no exit code of the command.
        return JobStatus(BackendJobId(job_id), state, None, record.native_id, detail)

    def logs(self, job_id: str) -> str:
        folder = JobFolder.existing(self.settings, job_id)
        record = folder.read_record()
        task_ids = [int(task_id) for task_id in record.extra.get("task_ids", [])]
        offsets = [
            TaskFileOffsetExt(submitted_task_info_id=task_id, file_type=file_type, offset=0)
            for task_id in task_ids
            for file_type in (STANDARD_OUTPUT_FILE, STANDARD_ERROR_FILE)
        ]
        request = DownloadPartsOfJobFilesFromClusterModel(
            session_code=self._session(),
            submitted_job_info_id=_heappe_id(record),
            task_file_offsets=offsets,
        )
        parts = self._call(
            "download the job's output",
            lambda: FileTransferApi(
                self._api
            ).heappe_file_transfer_download_parts_of_job_files_from_cluster_post(
                download_parts_of_job_files_from_cluster_model=request,
                _request_timeout=self._timeout,
            ),
        )
        files = {STANDARD_OUTPUT_FILE: folder.stdout, STANDARD_ERROR_FILE: folder.stderr}
        texts: dict[int, list[str]] = {STANDARD_OUTPUT_FILE: [], STANDARD_ERROR_FILE: []}
        for part in parts or []:
            if part.file_type is not None and int(part.file_type) in texts:
                texts[int(part.file_type)].append(part.content or "")
        for file_type, path in files.items():
            path.write_text("".join(texts[file_type]))
        return folder.read_logs()

    def cancel(self, job_id: str) -> None:
        folder = JobFolder.existing(self.settings, job_id)
        record = folder.read_record()
        if self.status(job_id).state.finished:
            return
        folder.update_record(cancel_requested=True)
        request = CancelJobModel(
            session_code=self._session(), submitted_job_info_id=_heappe_id(record)
        )
        self._call(
            "cancel the job",
            lambda: JobManagementApi(self._api).heappe_job_management_cancel_job_put(
                cancel_job_model=request, _request_timeout=self._timeout
            ),
        )
        logger.info("cancelled job %s (HEAppE job %s)", job_id, record.native_id)

    def fetch_outputs(self, job_id: str) -> list[Path]:
        """Download the template's ``download`` files into ``<job folder>/outputs``."""
        folder = JobFolder.existing(self.settings, job_id)
        record = folder.read_record()
        mapping = self._mapping(record.template)
        fetched = []
        for relative in mapping.download:
            target = _output_path(folder, relative)
            content = self._download(_heappe_id(record), relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            fetched.append(target)
        return fetched

    def _download(self, heappe_id: int, relative: str) -> bytes:
        request = DownloadFileFromClusterModel(
            session_code=self._session(),
            submitted_job_info_id=heappe_id,
            relative_file_path=relative,
        )
        content = self._call(
            f"download {relative!r}",
            lambda: FileTransferApi(self._api).heappe_file_transfer_download_file_from_cluster_post(
                download_file_from_cluster_model=request, _request_timeout=self._timeout
            ),
        )
        # HEAppE returns the file's bytes, which JSON carries as base64.
        return base64.b64decode(content or "")

    @property
    def _timeout(self) -> float:
        return self.settings.hpc.heappe.request_timeout_s

    def _mapping(self, template: str) -> HeappeTemplateSettings:
        mapping = self.settings.hpc.heappe.templates.get(template)
        if mapping is None:
            raise TemplateError(
                f"template {template!r} has no HEAppE command template; add "
                f"[hpc.heappe.templates.{template}] with command_template_id and "
                "cluster_node_type_id"
            )
        return mapping

    def _session(self) -> str:
        """Return the session code, authenticating on first use."""
        # NOTE: a HEAppE session expires; a backend object that lives longer than the
        # instance's session lifetime gets authorization errors and must be recreated.
        if self._session_code is None:
            self._session_code = self._authenticate()
        return self._session_code

    def _authenticate(self) -> str:
        heappe = self.settings.hpc.heappe
        users = UserAndLimitationManagementApi(self._api)
        if heappe.openid_token is not None:
            openid = AuthenticateUserOpenIdModel(
                credentials=OpenIdCredentialsExt(
                    username=heappe.username,
                    open_id_access_token=heappe.openid_token.get_secret_value(),
                )
            )
            code = self._call(
                "authenticate with the OpenID token",
                lambda: users.heappe_user_and_limitation_management_authenticate_user_open_id_post(
                    authenticate_user_open_id_model=openid, _request_timeout=self._timeout
                ),
            )
        else:
            secret = heappe.password.get_secret_value() if heappe.password is not None else ""
            password = AuthenticateUserPasswordModel(
                credentials=PasswordCredentialsExt(username=heappe.username, password=secret)
            )
            code = self._call(
                f"authenticate user {heappe.username!r}",
                lambda: users.heappe_user_and_limitation_management_authenticate_user_password_post(
                    authenticate_user_password_model=password, _request_timeout=self._timeout
                ),
            )
        if not isinstance(code, str) or not code:
            raise BackendError(f"HEAppE at {heappe.url} returned no session code")
        logger.info("authenticated to HEAppE at %s", heappe.url)
        return code

    def _upload(self, heappe_id: int, command: Command, mapping: HeappeTemplateSettings) -> None:
        if not mapping.upload:
            return
        files = []
        for name in mapping.upload:
            path = Path(command.parameters[name])
            try:
                files.append((path.name, path.read_bytes()))
            except OSError as exc:
                raise BackendError(
                    f"cannot read {path} for parameter {name!r} of template "
                    f"{command.template!r}: {exc}"
                ) from exc
        results = self._call(
            "upload the input files",
            lambda: FileTransferApi(
                self._api
            ).heappe_file_transfer_upload_files_to_job_execution_dir_post(
                session_code=self._session(),
                job_id=heappe_id,
                files=files,
                _request_timeout=self._timeout,
            ),
        )
        failed = [result.file_name for result in results or [] if not result.succeeded]
        if failed or len(results or []) != len(files):
            raise BackendError(f"HEAppE job {heappe_id}: upload of {failed or files} failed")

    def _job_info(self, record: JobRecord) -> Any:
        heappe_id = _heappe_id(record)
        return self._call(
            "read the job's state",
            lambda: JobManagementApi(self._api).heappe_job_management_current_info_for_job_get(
                session_code=self._session(),
                submitted_job_info_id=heappe_id,
                _request_timeout=self._timeout,
            ),
        )

    def _call(self, action: str, request: Callable[[], _Result]) -> _Result:
        """Run one API request, turning client errors into ``BackendError``."""
        try:
            return request()
        except ApiException as exc:
            # The exception carries the response only, never the request with credentials.
            raise BackendError(
                f"HEAppE at {self.settings.hpc.heappe.url} failed to {action}: HTTP "
                f"{exc.status} {exc.reason}: {str(exc.body or '')[:1000]}"
            ) from exc
        except ValidationError as exc:
            raise BackendError(
                f"py4heappe rejected the request to {action}: {exc.error_count()} invalid "
                f"fields: {[error['loc'] for error in exc.errors()]}"
            ) from exc


def build_create_job_request(
    heappe: HeappeSettings,
    job_id: str,
    command: Command,
    mapping: HeappeTemplateSettings,
    session_code: str,
) -> Any:
    """Return the ``CreateJobByProjectModel`` of one task running a HEAppE command template."""
    resources = command.resources
    uploaded = set(mapping.upload)
    try:
        values = [
            CommandTemplateParameterValueExt(
                command_parameter_identifier=mapping.parameters.get(name, name),
                # An uploaded file lies in the execution directory under its own name.
                parameter_value=Path(value).name if name in uploaded else value,
            )
            for name, value in command.parameters.items()
        ]
        task = TaskSpecificationExt(
            name=command.template,
            min_cores=resources.cpus,
            max_cores=resources.cpus,
            gpu_cores=resources.gpus or None,
            walltime_limit=resources.time_limit_min * 60,
            cluster_node_type_id=mapping.cluster_node_type_id,
            command_template_id=mapping.command_template_id,
            template_parameter_values=values,
            standard_output_file="stdout",
            standard_error_file="stderr",
            progress_file="stdprog",
            log_file="stdlog",
        )
        return CreateJobByProjectModel(
            session_code=session_code,
            job_specification=JobSpecificationExt(
                name=job_id[:50],
                project_id=heappe.project_id,
                cluster_id=heappe.cluster_id,
                file_transfer_method_id=heappe.file_transfer_method_id,
                tasks=[task],
            ),
        )
    except ValidationError as exc:
        raise TemplateError(
            f"template {command.template!r} does not fit HEAppE's job model: {exc}"
        ) from exc


def _require_connection_settings(heappe: HeappeSettings) -> None:
    missing = [
        key
        for key in ("url", "project_id", "cluster_id", "file_transfer_method_id")
        if getattr(heappe, key) is None
    ]
    if heappe.openid_token is None and (heappe.username is None or heappe.password is None):
        missing.append("username and password, or openid_token")
    if missing:
        raise BackendError(
            f"the HEAppE backend needs hpc.heappe settings that are not set: {', '.join(missing)}"
        )


def _heappe_id(record: JobRecord) -> int:
    if record.native_id is None:
        raise BackendError(f"job {record.job_id} has no HEAppE job id; its creation failed")
    return int(record.native_id)


def _output_path(folder: JobFolder, relative: str) -> Path:
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise BackendError(
            f"download path {relative!r} must be relative to the execution directory, "
            "without '..'"
        )
    return folder.root.joinpath("outputs", *parts)
