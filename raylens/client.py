"""A pure-HTTP client for the raylens API: submit images, wait for jobs, search.

It imports neither Ray nor torch, so a notebook or a laptop can drive a remote cluster with
only ``httpx`` and ``tqdm`` installed::

    with Client("http://cluster:8000", api_key="...") as client:
        ids = client.submit("photos/")          # a folder, a file, bytes, or a list of those
        jobs = client.wait(ids)                  # every job ends done or failed
        hits = client.search_text("a photo of a cat", top_k=5)

Every call retries 429/502/503/504 answers and connection errors with exponential backoff
(honouring ``Retry-After``). A submit request carries one ``Idempotency-Key`` that is reused on
every retry of that request, so a retry never creates a second job.
"""

# One module on purpose. It is the whole HTTP client: Client, its two errors, and the helpers
# only they use (retry delays, error answers, walking a folder into file parts). A notebook user
# reads it in one sitting, or copies it beside a notebook with raylens/media/formats.py, its only
# raylens import (pure Python, for the image suffixes a folder walk picks up). Split, it would be
# files that are only ever used together, and a copy would need all of them.

from __future__ import annotations

import collections
import json
import mimetypes
import os
import random
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from raylens.media.formats import IMAGE_SUFFIXES

with warnings.catch_warnings():  # in a kernel without ipywidgets tqdm.auto falls back to text
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

RETRY_STATUSES = frozenset({429, 502, 503, 504})
TERMINAL_STATES = frozenset({"done", "failed"})

PathLike = str | os.PathLike
Item = PathLike | bytes | bytearray | memoryview
Source = Item | Sequence[Item]


class ApiError(Exception):
    """An error answer of the raylens API (or no answer at all, after every retry).

    ``status`` is the HTTP status (``None`` when the server could not be reached), ``code`` the
    API error code (``not_found``, ``queue_full``, ...; ``unreachable`` without an answer) and
    ``message`` the server's explanation.
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        *,
        method: str = "",
        url: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.method = method
        self.url = url
        self.retry_after_s = retry_after_s
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        status = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{status} {self.code}: {self.message}{where}"

    def __reduce__(self):  # keep attributes across pickling (e.g. multiprocessing)
        return (
            _rebuild_api_error,
            (type(self), self.status, self.code, self.message, self.method, self.url),
        )


def _rebuild_api_error(cls, status, code, message, method, url):
    return cls(status, code, message, method=method, url=url)


class RetriesExhausted(ApiError):
    """The server kept answering 429/503 (or could not be reached) for ``attempts`` tries."""

    def __init__(self, last: ApiError, attempts: int) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(
            last.status,
            last.code,
            f"gave up after {attempts} attempts; last error: {last.message}",
            method=last.method,
            url=last.url,
            retry_after_s=last.retry_after_s,
        )

    def __reduce__(self):
        return (RetriesExhausted, (self.last, self.attempts))


class Client:
    """HTTP client of one raylens server (one ``httpx.Client``; use it as a context manager).

    ``max_retries`` is how many times a request is retried after a 429/502/503/504 answer or a
    connection error; the wait before retry n is ``backoff_s * 2**n`` plus up to 10 % jitter,
    capped at ``max_backoff_s``, or the server's ``Retry-After`` (also capped) when it sends one.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        self.url = url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # How many times each kind of transient failure was retried ("503", "unreachable", ...).
        self.retried: collections.Counter[str] = collections.Counter()
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    # -- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        source: Source,
        *,
        priority: str = "normal",
        pipeline: str = "embed",
        batch_size: int = 16,
        progress: bool = False,
        callback_url: str | None = None,
    ) -> list[str]:
        """Upload images; return their job ids in input order.

        ``source`` is bytes, a path to an image file, a folder (searched recursively for image
        suffixes, in sorted order), or a list of those. Files go ``batch_size`` per request;
        each request has its own idempotency key, reused on its retries. ``callback_url``:
        POSTed, signed, when each new job ends (the server needs RAYLENS_WEBHOOK_SECRET); see
        ``deliveries()``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        items = list(_expand(source))
        ids: list[str] = []
        with tqdm(
            total=len(items), unit="img", desc="submit", disable=not progress, leave=True
        ) as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                ids.extend(self._submit_batch(batch, start, priority, pipeline, callback_url))
                bar.update(len(batch))
        return ids

    def _submit_batch(
        self,
        batch: list[Path | bytes],
        offset: int,
        priority: str,
        pipeline: str,
        callback_url: str | None = None,
    ) -> list[str]:
        files = [("files", _file_part(item, offset + i)) for i, item in enumerate(batch)]
        key = uuid.uuid4().hex
        data = {"priority": priority, "pipeline": pipeline}
        if callback_url is not None:
            data["callback_url"] = callback_url
        body = self._request(
            "POST",
            "/v1/jobs",
            files=files,
            data=data,
            headers={"Idempotency-Key": key},
        )
        jobs = body.get("jobs") if isinstance(body, dict) else None
        if not isinstance(jobs, list) or len(jobs) != len(batch):
            got = len(jobs) if isinstance(jobs, list) else "no"
            raise ApiError(
                202,
                "bad_response",
                f"sent {len(batch)} files but the server answered with {got} jobs",
                method="POST",
                url=f"{self.url}/v1/jobs",
            )
        return [str(job["id"]) for job in jobs]

    def deliveries(self, job_id: str) -> dict[str, Any]:
        """The webhook deliveries of a job: state (none, pending, delivered, failed) and every
        attempt with its HTTP status or error."""
        out: dict[str, Any] = self._request("GET", f"/v1/jobs/{job_id}/deliveries")
        return out

    def get(self, job_id: str) -> dict[str, Any]:
        """One job record (state, timestamps, error, result); ``ApiError`` not_found if absent."""
        return self._request("GET", f"/v1/jobs/{job_id}")

    def jobs(
        self, state: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of jobs: ``{"jobs": [...], "next_cursor": str | None}``."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        if cursor is not None:
            params["cursor"] = cursor
        return self._request("GET", "/v1/jobs", params=params)

    def retry(self, job_id: str) -> dict[str, Any]:
        """Queue a failed job again; ``ApiError`` invalid_transition if it is not failed."""
        return self._request("POST", f"/v1/jobs/{job_id}/retry")

    def images(self, *, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        """A page of what is indexed, newest first: ``{"images": [...], "next_cursor"}`` (one
        entry per done job: sha256, source, model_id, faces, frames, ...)."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return self._request("GET", "/v1/images", params=params)

    def model(self) -> dict[str, Any]:
        """The active model: its model id, weights and the collection searches use, and the
        earlier ones (GET /v1/model)."""
        return dict(self._request("GET", "/v1/model"))

    def delete(self, job_id: str) -> dict[str, Any]:
        """Delete the image of a job and everything derived from it (its jobs, image, frame and
        face points, uploaded payload); returns what was removed. Safe to repeat. ``ApiError``
        not_found for an id that is neither a job nor a deleted one."""
        return self._request("DELETE", f"/v1/jobs/{job_id}")

    def delete_image(self, sha256: str) -> dict[str, Any]:
        """Delete an image by the sha256 of its bytes, and everything derived from it; as
        ``delete``. ``ApiError`` not_found when raylens holds nothing of it and never did."""
        return self._request("DELETE", f"/v1/images/{sha256}")

    def events(
        self,
        job_ids: Iterable[str] | None = None,
        *,
        states: Iterable[str] | None = None,
        idempotency_key: str | None = None,
        last_event_id: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Job events as they happen (``GET /v1/events``), forever, until you stop iterating.

        Each event is a dict: ``id``, ``job_id``, ``state`` (queued, running, done, failed,
        deleted), ``lane``, ``attempts``, ``error_code``, ``at``, ``point_ids``; with
        ``job_ids`` or ``idempotency_key`` and no ``last_event_id``, each job's current state
        comes first, marked ``snapshot: True``. When the stream ends (the server closes it
        every RAYLENS_EVENTS_STREAM_S) or the connection drops, it reconnects with the last id
        seen, so no event is missed or repeated; consecutive failures are retried like any
        request (``max_retries``). ``last_event_id="0"`` replays every event the server keeps;
        one older than that raises ApiError ``events_expired`` (410).
        """
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("job_id", str(i)) for i in job_ids or ()
        ]
        params += [("state", str(st)) for st in states or ()]
        if idempotency_key is not None:
            params.append(("idempotency_key", idempotency_key))
        last = last_event_id
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            error: ApiError | None = None
            try:
                with self._http.stream("GET", "/v1/events", params=params, headers=headers) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        error = _api_error(resp, "GET", f"{self.url}/v1/events")
                        if resp.status_code not in RETRY_STATUSES:
                            raise error
                    else:
                        for kind, event in _sse_events(resp.iter_lines()):
                            failures = 0
                            if kind == "error":
                                break  # the server's stream failed: resume after `last`
                            last = event["id"]
                            yield event
            except httpx.TransportError as exc:
                error = ApiError(None, "unreachable", f"{type(exc).__name__}: {exc}")
            if error is None:
                continue  # the server ended the stream: resume at once
            if failures >= self.max_retries:
                raise RetriesExhausted(error, failures + 1)
            self.retried[str(error.status or error.code)] += 1
            time.sleep(self._delay(failures, error.retry_after_s))
            failures += 1

    def wait(
        self,
        ids: Iterable[str],
        *,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Wait until every job is done or failed; return the final records in ``ids`` order.

        Follows the jobs' events (``GET /v1/events``) when the server has them and there are
        at most 1,000 distinct ids, else polls each job every ``poll_s``. Raises
        ``TimeoutError`` (naming how many are still pending) after ``timeout_s`` (checked at
        each event, and at least every RAYLENS_EVENTS_KEEPALIVE_S while following events).
        """
        ids = [str(i) for i in ids]
        pending = list(dict.fromkeys(ids))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if 0 < len(pending) <= 1000:
            final = self._wait_events(pending, deadline, timeout_s, progress)
            if final is not None:
                return [final[i] for i in ids]
        return self._wait_polling(ids, pending, deadline, timeout_s, poll_s, progress)

    def _wait_events(
        self,
        pending: list[str],
        deadline: float | None,
        timeout_s: float | None,
        progress: bool,
    ) -> dict[str, dict[str, Any]] | None:
        """The final records by following events; None when the server has no event route."""
        final: dict[str, dict[str, Any]] = {}
        left = set(pending)
        try:
            with tqdm(total=len(left), unit="job", desc="wait", disable=not progress) as bar:
                for event in self.events(pending):
                    job_id = event["job_id"]
                    if job_id in left and event["state"] in (*TERMINAL_STATES, "deleted"):
                        left.discard(job_id)
                        final[job_id] = (
                            {"id": job_id, "state": "deleted"}
                            if event["state"] == "deleted"
                            else self.get(job_id)
                        )
                        bar.update(1)
                    if not left:
                        return final
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"{len(left)} of {len(pending)} jobs still pending after "
                            f"{timeout_s:g} s (first: {sorted(left)[0]})"
                        )
        except ApiError as exc:
            if exc.status == 404:  # a server without /v1/events (job ids never answer 404)
                return None
            raise
        return final

    def _wait_polling(
        self,
        ids: list[str],
        pending: list[str],
        deadline: float | None,
        timeout_s: float | None,
        poll_s: float,
        progress: bool,
    ) -> list[dict[str, Any]]:
        final: dict[str, dict[str, Any]] = {}
        with tqdm(total=len(pending), unit="job", desc="wait", disable=not progress) as bar:
            while True:
                still: list[str] = []
                for job_id in pending:
                    job = self.get(job_id)
                    if job.get("state") in TERMINAL_STATES:
                        final[job_id] = job
                        bar.update(1)
                    else:
                        still.append(job_id)
                pending = still
                if not pending:
                    return [final[i] for i in ids]
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{len(pending)} of {len(final) + len(pending)} jobs still pending "
                        f"after {timeout_s:g} s (first: {pending[0]})"
                    )
                pause = poll_s
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - time.monotonic()))
                time.sleep(pause)

    # -- search ---------------------------------------------------------------------------

    def search_text(
        self, text: str, top_k: int = 10, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Images closest to a text query: hits with id, score, job_id, source, name, payload."""
        return self._search({"text": text}, top_k, filters)

    def search_vector(
        self, vector: Sequence[float], top_k: int = 10, filters: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Images closest to an embedding vector (same model and dimension as the index)."""
        return self._search({"vector": [float(x) for x in vector]}, top_k, filters)

    def search_image(
        self,
        image: PathLike | bytes,
        top_k: int = 10,
        filters: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Images closest to a query image, given as a path or its encoded bytes."""
        data: dict[str, str] = {"top_k": str(top_k)}
        if filters:
            data["filters"] = json.dumps(dict(filters))
        item: Path | bytes = bytes(image) if isinstance(image, bytes | bytearray) else Path(image)
        body = self._request(
            "POST", "/v1/search", files=[("image", _file_part(item, 0))], data=data
        )
        return list(body.get("hits", []))

    def search_face(
        self,
        image: PathLike | bytes | None = None,
        *,
        face_id: str | None = None,
        face_index: int | None = None,
        top_k: int = 10,
        max_distance: float | None = None,
    ) -> dict[str, Any]:
        """Stored faces like the largest (or face_index) face of an image, or like a stored
        face (face_id): ``{"query", "max_distance", "hits": [{id, distance, job_id, box,
        timestamp_s, ...}]}``, closest first."""
        if (image is None) == (face_id is None):
            raise ValueError("give an image or a face_id")
        if face_id is not None:
            payload: dict[str, Any] = {"face_id": face_id, "top_k": top_k}
            if max_distance is not None:
                payload["max_distance"] = max_distance
            return dict(self._request("POST", "/v1/faces/search", json=payload))
        data = {"top_k": str(top_k)}
        if face_index is not None:
            data["face_index"] = str(face_index)
        if max_distance is not None:
            data["max_distance"] = str(max_distance)
        item: Path | bytes = bytes(image) if isinstance(image, bytes | bytearray) else Path(image)  # type: ignore[arg-type]
        return dict(
            self._request(
                "POST", "/v1/faces/search", files=[("image", _file_part(item, 0))], data=data
            )
        )

    def _search(
        self, query: dict[str, Any], top_k: int, filters: Mapping[str, Any] | None
    ) -> list[dict[str, Any]]:
        payload = {**query, "top_k": top_k}
        if filters:
            payload["filters"] = dict(filters)
        body = self._request("POST", "/v1/search", json=payload)
        return list(body.get("hits", []))

    # -- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Liveness: ``{"status": "ok"}`` when the HTTP ingress answers."""
        return self._request("GET", "/v1/healthz")

    def ready(self) -> dict[str, Any]:
        """Readiness body, ``{"ready": bool, "workers": [...]}``; a 503 is returned, not raised."""
        return self._request("GET", "/v1/readyz", accept=(503,))

    # -- transport ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        accept: Sequence[int] = (),
        **kwargs: Any,
    ) -> Any:
        """Send one request, retrying transient failures; return the decoded JSON body."""
        url = f"{self.url}{path}"
        attempt = 0
        while True:
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                error = ApiError(
                    None, "unreachable", f"{type(exc).__name__}: {exc}", method=method, url=url
                )
            else:
                if resp.status_code < 400 or resp.status_code in accept:
                    return _json_body(resp)
                error = _api_error(resp, method, url)
                if resp.status_code not in RETRY_STATUSES:
                    raise error
            if attempt >= self.max_retries:
                raise RetriesExhausted(error, attempt + 1)
            self.retried[str(error.status or error.code)] += 1
            time.sleep(self._delay(attempt, error.retry_after_s))
            attempt += 1

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_backoff_s)
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        return min(base * (1.0 + 0.1 * random.random()), self.max_backoff_s)


# -- helpers ------------------------------------------------------------------------------


def _sse_events(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event type, data) of each Server-Sent Event in these lines; comments are skipped."""
    kind, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)


def _json_body(resp: httpx.Response) -> Any:
    if not resp.content:
        return {}
    try:
        return resp.json()
    except ValueError:
        return {"text": resp.text}


def _api_error(resp: httpx.Response, method: str, url: str) -> ApiError:
    code, message = f"http_{resp.status_code}", resp.text.strip()[:500] or resp.reason_phrase
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
    return ApiError(
        resp.status_code,
        code,
        message,
        method=method,
        url=url,
        retry_after_s=_retry_after(resp.headers.get("Retry-After")),
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _expand(source: Source) -> Iterator[Path | bytes]:
    """Files and byte strings of a source, folders expanded recursively in sorted order."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(
                (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not found:
                raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            yield from found
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
        return
    if isinstance(source, Iterable):
        for item in source:
            if not isinstance(item, bytes | bytearray | memoryview | str | os.PathLike):
                raise TypeError(f"cannot submit a {type(item).__name__}; use paths or bytes")
            yield from _expand(item)
        return
    raise TypeError(f"cannot submit a {type(source).__name__}; use a path, bytes or a list")


def _file_part(item: Path | bytes, index: int) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of one multipart file part."""
    if isinstance(item, bytes):
        return (f"upload-{index:05d}", item, "application/octet-stream")
    ctype = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
    return (item.name, item.read_bytes(), ctype)
