"""``genserve workflow list|info|run``: a shell client of a running server's workflow bridge.

Unlike the pipeline commands, these talk to a server over HTTP and its ``/ws`` socket, so a
workflow runs where the models are loaded. Following cli.py: what a script reads (aliases, saved
paths, ``--json``) goes to stdout; progress and messages go to stderr. Exit codes: 0 done, 1 the
server refused or failed (``error: <detail>``), 2 a bad argument (caught before anything is sent
where possible), 130 interrupted (closing the socket cancels the job on the server).
"""

from __future__ import annotations

import email
import email.policy
import json
import math
import mimetypes
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, NoReturn
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from genserve.cli import options as opt

workflow_app = typer.Typer(
    no_args_is_help=True, help="Run the bridge's workflows from a shell: list, info, run."
)

Url = Annotated[
    str,
    typer.Option("--url", envvar="GENSERVE_URL", help="The genserve server's REST address (its bridge)."),
]
Timeout = Annotated[
    float,
    typer.Option("--timeout", min=0.1, help="Seconds for each HTTP call; a running job has no time limit."),
]
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
TRUE, FALSE = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}
EXPECTED = {"int": "an integer", "float": "a finite number", "bool": "true/false, yes/no or 1/0"}
PERCENT = re.compile(r"[-+]?\d+(?:\.\d+)?")
_err = Console(stderr=True, highlight=False)


def _die(message: str, code: int = 1) -> NoReturn:
    """One line on stderr and the exit code; markup off so server text prints as sent."""
    _err.print(f"error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


class Bridge:
    """The bridge's HTTP endpoints; every failure ends the command with a line saying why."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            _die(f"--url must look like http://host:port, not {url!r}", 2)
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            _die(f"cannot connect to the genserve server at {self.url} ({exc}); is `genserve serve` running?")
        except httpx.TimeoutException:
            _die(f"{method} {self.url}{path} took longer than --timeout {self.http.timeout.read}s")
        except httpx.HTTPError as exc:
            _die(f"{method} {self.url}{path} failed: {exc}")
        if response.is_success:
            return response
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = response.text.strip() or response.reason_phrase
        detail = detail if isinstance(detail, str) else json.dumps(detail)
        if response.status_code == 400:
            _die(detail)
        _die(f"{detail} (HTTP {response.status_code} from {method} {path})")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            _die(f"{method} {path} did not answer JSON: {response.text[:200]!r}")

    def inputs(self, alias: str) -> dict[str, dict[str, Any]]:
        found = self.json("GET", "/workflow-info", params={"workflow": alias})
        if not isinstance(found, dict) or not all(isinstance(v, dict) for v in found.values()):
            _die(f"GET /workflow-info answered {type(found).__name__}, not an object of inputs")
        return found

    def ws_url(self, client_id: str) -> str:
        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path + "/ws", urlencode({"clientId": client_id}), ""))


def convert(key: str, kind: str, text: str) -> Any:
    """A command-line string as the input's declared type; ValueError says what was expected."""
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            if math.isfinite(value := float(text)):  # JSON has no NaN or infinity
                return value
        elif kind == "bool":
            if (lowered := text.strip().lower()) in TRUE | FALSE:
                return lowered in TRUE
        else:
            return text
    except ValueError:
        pass
    raise ValueError(f"{key} expects {EXPECTED.get(kind, kind)}, not {text!r}")


def parse_assignments(
    assignments: list[str], inputs: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Split ``key=value`` arguments into typed values and files to upload; exit 2 on the first bad one.

    Everything is checked before anything is uploaded or queued, so a typo costs no server work.
    ``key=@file`` uploads a file; ``key=@@text`` passes the literal ``@text``.
    """
    values: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            _die(f"{item!r} is not key=value (e.g. 3/seed=7 or 78/image=@photo.png)", 2)
        if key not in inputs:
            valid = ", ".join(sorted(inputs)) or "(none)"
            _die(f"{key!r} is not an input of this workflow; valid keys: {valid}", 2)
        if text.startswith("@") and not text.startswith("@@"):
            path = Path(text[1:]).expanduser()
            if not path.is_file():
                _die(f"{key}: no such local file {str(path)!r}", 2)
            files[key] = path
            continue
        text = text[1:] if text.startswith("@@") else text
        try:
            values[key] = convert(key, str(inputs[key].get("type", "str")), text)
        except ValueError as exc:
            _die(str(exc), 2)
    return values, files


def upload(bridge: Bridge, files: dict[str, Path]) -> dict[str, str]:
    """All ``@file`` values in one ``POST /upload``; returns each key's saved name on the server."""
    fields: dict[str, str] = {}  # form field per key: "78/image" -> "78_image", unique
    for key in files:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", key)
        fields[key] = name if name not in fields.values() else f"{name}_{len(fields)}"
    try:  # the server takes files of a few MB at most: reading them whole is fine
        parts = [(fields[k], (p.name, p.read_bytes(), mimetypes.guess_type(p)[0])) for k, p in files.items()]
    except OSError as exc:
        _die(f"cannot read {exc.filename}: {exc.strerror}", 2)
    saved = bridge.json("POST", "/upload", files=parts)
    if not isinstance(saved, dict):
        _die(f"POST /upload answered {saved!r}, not an object")
    names: dict[str, str] = {}
    for key, form_field in fields.items():
        name = saved.get(form_field)
        if not isinstance(name, str) or not name:
            _die(f"POST /upload did not return a saved name for {key} (field {form_field!r}): {saved!r}")
        names[key] = name
        _err.print(f"uploaded {files[key]} as {name}", markup=False)
    return names


def follow(ws: ClientConnection, progress: Progress, task: Any) -> tuple[str, str]:
    """Read ``/ws`` until the job ends (``closed``, ``error`` or the socket closing): (status, details).

    Receives in short slices so Ctrl-C is handled promptly; there is no overall time limit.
    """
    while True:
        try:
            message = json.loads(ws.recv(timeout=0.5))
            status, details = str(message["status"]), message.get("details", "")
        except TimeoutError:
            continue
        except ConnectionClosed:
            return "disconnected", "the server closed the socket before saying the job ended"
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # not a status message: nothing to show
        details = details if isinstance(details, str) else json.dumps(details)
        if status == "progress":
            found = PERCENT.search(details)
            if found:
                progress.update(task, completed=min(max(float(found.group()), 0.0), 100.0))
        elif status in ("closed", "error"):
            if status == "closed":
                progress.update(task, completed=100.0)
            return status, details


@dataclass(frozen=True)
class Part:
    name: str
    filename: str
    content_type: str
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """A ``multipart/form-data`` body as parts, with the stdlib's MIME parser (binary-safe)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    if not message.is_multipart():
        raise ValueError(f"expected a multipart body, got {content_type!r}")
    parts = []
    for part in message.iter_parts():
        data = part.get_payload(decode=True)
        name = part.get_param("name", "", header="content-disposition")
        parts.append(Part(str(name or ""), part.get_filename() or "", part.get_content_type(), data or b""))
    return parts


def safe_name(filename: str, fallback: str, content_type: str) -> str:
    """Only the base name, without control characters; ``..`` or nothing falls back to the part name."""
    base = PurePosixPath(filename.replace("\\", "/")).name
    base = "".join(ch for ch in base if ch.isprintable() and ch not in "/\\:")
    if base in ("", ".", "..") or base.startswith(".."):
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", fallback) or "output"
        base = stem + (mimetypes.guess_extension(content_type) or ".bin")
    return base


def save_part(folder: Path, part: Part, index: int) -> Path:
    """Write into ``folder``, never over an existing file: ``name.png``, ``name-1.png``..."""
    base = safe_name(part.filename, part.name or f"output-{index}", part.content_type)
    stem, suffix = (base.rsplit(".", 1)[0], "." + base.rsplit(".", 1)[1]) if "." in base[1:] else (base, "")
    for n in range(10_000):
        path = folder / (base if n == 0 else f"{stem}-{n}{suffix}")
        try:
            with path.open("xb") as out:  # exclusive create: refuses existing files and links
                out.write(part.data)
            return path
        except FileExistsError:
            continue
    _die(f"could not find a free file name for {base} in {folder}")


def fetch_results(bridge: Bridge, client_id: str, output: Path) -> list[dict[str, str]]:
    response = bridge.call("GET", "/history", params={"clientId": client_id})
    if response.status_code == 204 or not response.content:
        why = response.headers.get("x-detail") or "nothing to fetch"  # a 204 has no body for its detail
        _err.print(f"the server returned no results for this job: {why}", markup=False)
        return []
    try:
        parts = parse_multipart(response.headers.get("content-type", ""), response.content)
    except ValueError as exc:
        _die(f"GET /history: {exc}")
    output.mkdir(parents=True, exist_ok=True)
    return [
        {"name": part.name, "filename": part.filename, "path": str(save_part(output, part, i))}
        for i, part in enumerate(parts)
    ]


@dataclass
class Job:
    """What a run did; with the saved paths it is the ``--json`` report."""

    workflow: str
    client_id: str
    inputs: dict[str, Any] = field(default_factory=dict)
    queued: str = ""
    status: str = ""
    details: str = ""
    files: list[dict[str, str]] = field(default_factory=list)


def open_socket(bridge: Bridge, client_id: str) -> ClientConnection:
    """``/ws`` for this client; pings find a dead server, a slow job is never timed out."""
    address = bridge.ws_url(client_id)
    try:
        return connect(address, open_timeout=bridge.http.timeout.connect, ping_timeout=60, close_timeout=5)
    except (OSError, TimeoutError, WebSocketException) as exc:
        _die(f"cannot open the progress socket {address}: {exc}")


def run_job(bridge: Bridge, job: Job, assignments: list[str], quiet: bool) -> None:
    """Check the arguments, upload files, queue the job with the socket already open, follow it."""
    inputs = bridge.inputs(job.workflow)
    job.inputs, files = parse_assignments(assignments, inputs)
    if files:
        job.inputs.update(upload(bridge, files))
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with (
        open_socket(bridge, job.client_id) as ws,
        Progress(*columns, console=_err, disable=quiet) as progress,
    ):
        body = {"workflow": job.workflow, **job.inputs}
        answer = bridge.json(
            "POST", "/generate-based-workflow", params={"clientId": job.client_id}, json=body
        )
        job.queued = str(answer.get("detail", answer) if isinstance(answer, dict) else answer)
        progress.console.print(f"{job.workflow}: {job.queued} (client id {job.client_id})", markup=False)
        job.status, job.details = follow(ws, progress, progress.add_task(job.workflow, total=100.0))
    if job.status == "disconnected":  # ask the server how it ended rather than guess
        state = bridge.json("GET", "/execution-info", params={"clientId": job.client_id})
        if isinstance(state, dict) and state.get("status"):
            job.status, job.details = str(state["status"]), str(state.get("details", ""))


@workflow_app.command("list")
def list_workflows(url: Url = DEFAULT_URL, timeout: Timeout = DEFAULT_TIMEOUT) -> None:
    """Print the workflow aliases the server offers, one per line (GET /workflow-list)."""
    aliases = Bridge(url, timeout).json("GET", "/workflow-list")
    if not isinstance(aliases, list):
        _die(f"GET /workflow-list answered {aliases!r}, not a list")
    for alias in aliases:
        typer.echo(alias)


@workflow_app.command("info")
def info(
    alias: Annotated[str, typer.Argument(help="A workflow alias from `genserve workflow list`.")],
    url: Url = DEFAULT_URL,
    timeout: Timeout = DEFAULT_TIMEOUT,
    as_json: opt.AsJson = False,
) -> None:
    """Show a workflow's exposed inputs: the keys `run` takes as key=value (GET /workflow-info)."""
    inputs = Bridge(url, timeout).inputs(alias)
    if as_json:
        typer.echo(json.dumps(inputs, indent=2))
        return
    table = Table(title=f"{alias} inputs", caption="LoadImage inputs take key=@local-file (uploaded).")
    table.add_column("input", no_wrap=True)  # the key to type: never cut
    for column in ("type", "class", "title", "default"):
        table.add_column(column, overflow="fold")
    for key, spec in inputs.items():
        row = (key, spec.get("type", ""), spec.get("class", ""), spec.get("title", ""), spec.get("default"))
        table.add_row(*(cell if isinstance(cell, str) else json.dumps(cell) for cell in row))
    Console(highlight=False).print(table)


@workflow_app.command("run")
def run(
    alias: Annotated[str, typer.Argument(help="A workflow alias from `genserve workflow list`.")],
    assignments: Annotated[
        list[str] | None,
        typer.Argument(
            help="Inputs as key=value (keys from `workflow info`); key=@file uploads a local file, "
            "key=@@text passes a literal @text.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the results.")] = Path("outputs"),
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="Client id for the job. Unset: a new UUID.")
    ] = None,
    url: Url = DEFAULT_URL,
    timeout: Timeout = DEFAULT_TIMEOUT,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON object (paths, final status) instead of paths.")
    ] = False,
    quiet: opt.Quiet = False,
) -> None:
    """Run a workflow on the server with a live progress bar, then save its results into --output.

    The socket is opened before the job is queued so no progress is missed; Ctrl-C closes it,
    which cancels the job on the server (exit 130).
    """
    bridge = Bridge(url, timeout)
    job = Job(alias, client_id or str(uuid.uuid4()))
    try:
        run_job(bridge, job, assignments or [], quiet)
        if job.status != "error":
            job.files = fetch_results(bridge, job.client_id, output)
    except KeyboardInterrupt:
        _err.print("interrupted: the socket is closed, so the server cancels the job", markup=False)
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps({**asdict(job), "paths": [item["path"] for item in job.files]}, indent=2))
    else:
        for item in job.files:
            typer.echo(item["path"])
    if job.status == "error":
        _die(job.details or "the job failed")
