"""The one settings object: every limit and location, read from RAYLENS_* variables once.

Over 400 lines on purpose: it is one flat list of ~80 fields, each with its limits and its
description (invariant 9, docs/architecture.md); splitting it would scatter the one object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

from raylens.errors import SettingsError

ENV_PREFIX = "RAYLENS_"


class Settings(BaseSettings):
    """All raylens settings. Each field is read from `RAYLENS_<FIELD NAME IN CAPITALS>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- locations -------------------------------------------------------------------------
    data_dir: Path = Field(
        default=Path.home() / ".raylens",
        description="Folder for the SQLite job store, uploaded payloads and the embedded "
        "vector engine.",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://host:port/db. When set, jobs (and payloads, see payload_store) "
        "live in Redis instead of the data dir.",
    )
    redis_prefix: str = Field(default="raylens", description="Key prefix in Redis.")
    payload_store: Literal["auto", "fs", "redis"] = Field(
        default="auto",
        description="Where uploaded bytes go: 'fs' (data dir), 'redis', or 'auto' "
        "(redis when redis_url is set, else fs).",
    )
    qdrant_url: str | None = Field(
        default=None,
        description="Qdrant server URL; unset = Qdrant Edge, the Qdrant engine embedded in the "
        "index actor, with its files in the data dir.",
    )
    qdrant_api_key: str | None = Field(
        default=None,
        repr=False,
        description="API key sent to the Qdrant server at qdrant_url (unused when embedded).",
    )
    qdrant_collection: str = Field(
        default="raylens_images",
        min_length=1,
        description="Collection of image vectors (OpenCLIP, one point per image or frame).",
    )
    qdrant_faces_collection: str = Field(
        default="raylens_faces", min_length=1, description="Collection of face embeddings."
    )
    qdrant_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Timeout of each call to the Qdrant server, in whole seconds (the client "
        "takes an int; unused by the embedded engine).",
    )
    index_build_points: int = Field(
        default=10_000,
        ge=0,
        description="Embedded engine: once this many points were written since the last HNSW "
        "build, build the index again, in a separate low-priority process, on a copy of the "
        "collection that is swapped in when it has caught up (0 = never build: every search "
        "scans every point). Smaller keeps search faster, larger builds less often.",
    )
    index_build_threads: int = Field(
        default=1,
        ge=0,
        description="Embedded engine: threads of one HNSW build (0 = one per CPU; the build "
        "shares the CPUs with the workers).",
    )
    index_catchup_points: int = Field(
        default=4096,
        ge=1,
        description="Embedded engine: writes replayed onto a freshly built copy per index call "
        "until it has caught up, so no call waits for the whole replay.",
    )
    index_build_max_backlog: int = Field(
        default=200_000,
        ge=1,
        description="Embedded engine: points written during one build that the index actor "
        "keeps in memory to replay onto the copy; past this the build is dropped and tried "
        "again later (bounds the actor's memory: about 2 KB per 512-d point).",
    )

    # --- model ------------------------------------------------------------------------------
    clip_model: str = Field(default="ViT-B-32", min_length=1, description="OpenCLIP architecture.")
    clip_pretrained: str = Field(
        default="laion2b_s34b_b79k",
        min_length=1,
        description="OpenCLIP pretrained tag, a path to a local checkpoint, or 'none' for "
        "random weights (benchmarks and smoke runs only).",
    )
    clip_model_config: Path | None = Field(
        default=None,
        description="Optional JSON file with an extra OpenCLIP architecture config to register.",
    )
    clip_device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        default="auto",
        description="Where the model runs: auto (cuda, then mps, then cpu), cuda, mps or cpu; "
        "a device the worker lacks fails its model load.",
    )
    clip_precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto", description="auto = fp16 on cuda, fp32 elsewhere."
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="Torch intra-op threads per worker (default: its CPUs)."
    )

    # --- faces ------------------------------------------------------------------------------
    faces_enabled: bool = Field(
        default=True,
        description="Load the face models in every worker (jobs with pipeline faces/both).",
    )
    face_detector: Literal["hog", "cnn"] = Field(
        default="hog", description="dlib detector: 'hog' (fast on CPU) or 'cnn' (more accurate)."
    )
    face_upsample: int = Field(
        default=1, ge=0, le=4, description="Upsampling before detection (finds smaller faces)."
    )
    face_min_size_px: int = Field(
        default=20, ge=1, description="Faces smaller than this (shorter side, pixels) are dropped."
    )
    face_max_faces: int = Field(default=32, ge=1, le=1000, description="Largest faces kept.")
    face_min_score: float = Field(default=0.0, description="Detector score threshold.")
    face_max_side: int = Field(
        default=1024,
        ge=64,
        le=8192,
        description="Images are searched for faces at most this large (longest side, pixels).",
    )
    face_jitters: int = Field(
        default=1,
        ge=1,
        le=100,
        description="dlib re-samples each face this many times when embedding it (more is "
        "slower, slightly more robust).",
    )
    face_match_threshold: float = Field(
        default=0.6,
        gt=0,
        description="Face search returns faces within this Euclidean distance (dlib: 0.6).",
    )

    # --- video ------------------------------------------------------------------------------
    video_every_s: float = Field(
        default=1.0, gt=0, description="A video frame is sampled every this many seconds."
    )
    video_scene_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Also sample a frame when the picture changes by more than this (0..1).",
    )
    video_max_duration_s: float = Field(
        default=3600.0,
        gt=0,
        description="Longest video accepted, seconds (checked on the header before decoding, "
        "and on every frame's timestamp).",
    )
    video_max_frames: int = Field(
        default=4000, ge=1, description="Sampled frames per video (an hour at 1/s fits)."
    )
    video_max_pixels: int = Field(
        default=3840 * 2160, ge=1, description="Largest video resolution (width x height)."
    )
    max_video_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024, ge=1, description="Size cap of one video file."
    )

    # --- workers ----------------------------------------------------------------------------
    num_workers: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Worker actors started (kept within min_workers..max_workers).",
    )
    worker_num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPU share per worker (fractional allowed). Unset = 1 if the cluster has "
        "GPUs, else 0.",
    )
    reindex_actors: int = Field(
        default=1,
        ge=1,
        le=64,
        description="`raylens reindex`: actors that load the new model and re-embed (beside "
        "the workers, which keep serving the old model until the switch).",
    )
    reindex_num_gpus: float | None = Field(
        default=None,
        ge=0,
        description="`raylens reindex`: GPU share per re-embedding actor. Unset = the workers' "
        "share; on a cluster whose GPUs the workers fill, set both so they fit side by side "
        "(e.g. 0.5 each).",
    )
    worker_num_cpus: float = Field(
        default=1.0,
        gt=0,
        description="CPUs each worker reserves in Ray; also its torch threads (rounded) unless "
        "torch_threads is set.",
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description='Custom Ray resources each worker asks for, as JSON (e.g. {"gpu_node": 1}): '
        "places workers on the nodes that declare them (`ray start --resources`).",
    )
    max_batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="Most images (or video frames) per model call, and the fewest jobs a "
        "worker's lease asks for (see lease_max_jobs).",
    )
    lease_max_jobs: int = Field(
        default=128,
        ge=1,
        le=65_536,
        description="Most jobs one lease hands a worker. A worker asks for about lease_target_s "
        "of its own work (measured), never fewer than max_batch_size: a fast model takes "
        "bigger leases, so the per-lease cost (Ray calls, store transactions) is paid less "
        "often; a slow one keeps leases of one model batch.",
    )
    lease_target_s: float = Field(
        default=0.5,
        gt=0,
        le=3600,
        description="Seconds of work a worker's lease aims to cover (its measured jobs/s times "
        "this, between max_batch_size and lease_max_jobs). It bounds how long a job of a "
        "higher lane waits behind a worker's leased batch.",
    )
    batch_wait_ms: int = Field(
        default=20,
        ge=0,
        le=60_000,
        description="Once a first job is queued, how long a lease waits for the batch to fill "
        "up to the jobs it asks for.",
    )
    decode_threads: int = Field(
        default=2, ge=1, le=256, description="Threads per worker that decode a batch's inputs."
    )
    decode_device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu",
        description="Where JPEGs are decoded: cpu (Pillow, reduced-scale decode of large JPEGs), "
        "cuda (torchvision's nvJPEG: decode, resize and crop on the GPU), auto (cuda when the "
        "worker's model runs on cuda). Face jobs and other formats always decode on the CPU.",
    )
    prefetch_batches: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Decoded batches kept ready while one is inferred. A worker holds at most "
        "this many leases plus the one in its model and the one being written (upsert and "
        "ack, beside the model), and a killed worker's jobs are redone elsewhere: 0 holds one "
        "lease at a time (lease, decode, model and write take turns; at most one batch to "
        "redo).",
    )
    overlap_decode: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Decode the next batch while the current one is inferred. 'off' makes "
        "decoding and inference take turns on the CPU; 'auto' overlaps only on cuda/mps (on a "
        "CPU model, decode threads beside the forward pass slow it more than they save).",
    )
    worker_start_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="How long workers get to load their models: start-up waits this long for "
        "them, and the supervisor does not call a new worker unresponsive before then.",
    )
    worker_stall_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="A worker holding jobs without progress (a batch leased, decoded or done) "
        "this long is stalled: it stops extending its leases and the supervisor replaces it.",
    )
    supervise_interval_s: float = Field(
        default=5.0, gt=0, description="How often the supervisor checks every worker's progress."
    )
    # Scaling: the supervisor keeps the worker count between min_workers and max_workers (both
    # default to num_workers, which is what `raylens up` starts: no scaling unless max > min).
    min_workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Fewest workers the supervisor scales down to (unset: num_workers, or "
        "max_workers when that is lower).",
    )
    max_workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Most workers the supervisor scales up to (unset: num_workers, or "
        "min_workers when that is higher).",
    )
    scale_up_backlog: int = Field(
        default=64,
        ge=1,
        description="Queued jobs per live worker above which one more worker is added.",
    )
    scale_up_oldest_s: float = Field(
        default=30.0, gt=0, description="Add a worker when the oldest queued job is this old."
    )
    scale_down_idle_s: float = Field(
        default=120.0,
        gt=0,
        description="A worker with nothing to do this long (and nothing queued) is drained and "
        "removed, down to min_workers.",
    )
    scale_cooldown_s: float = Field(
        default=30.0, ge=0, description="Least time between two scaling steps."
    )

    # --- queue and jobs -----------------------------------------------------------------------
    lease_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A leased job neither acked nor extended within this is re-queued as "
        "lease_expired (an attempt); a worker that makes progress extends its leases every "
        "third of it.",
    )
    lease_check_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the queue actor looks for expired leases (and publishes its "
        "metrics).",
    )
    lease_poll_s: float = Field(
        default=2.0, gt=0, description="How long an idle worker's lease call waits for work."
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Attempts a job gets (lease expiries and model errors count; input errors "
        "fail at once; an unavailable index or store never counts) before it fails as "
        "dead_letter.",
    )
    infra_backoff_first_s: float = Field(
        default=0.5,
        gt=0,
        description="When the index or a store is unavailable, a worker gives its jobs back "
        "(no attempt counted) and pauses leasing; it probes the dependency first after this "
        "long, then twice as long each time, up to infra_backoff_max_s.",
    )
    infra_backoff_max_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest pause between two probes of an unavailable index or store (and "
        "between two lease calls while the job store is down): how long, at most, work stays "
        "paused after the dependency is back. Also how long one probe waits for an answer.",
    )
    queue_max_depth: int = Field(
        default=100_000,
        ge=1,
        description="Most queued jobs; a submission that would go above it is refused whole "
        "with queue_full (nothing written).",
    )
    queue_cache_jobs: int = Field(
        default=20_000,
        ge=0,
        description="Job records the queue actor keeps in memory as it last wrote them (jobs "
        "queued or leased), so a lease or an ack reads no row back from the store; and as "
        "many finished jobs' outcomes, so an ingest following its jobs reads none either. "
        "Each holds about 2 KB. 0 turns both off (every read goes to the store).",
    )
    max_input_bytes: int = Field(default=50 * 1024 * 1024, ge=1, description="Upload/file cap.")
    max_image_pixels: int = Field(
        default=89_478_485, ge=1, description="Decompression-bomb limit (width x height)."
    )
    # 2 GiB admits any image under the pixel limit in its costliest mode (89.5 Mpx RGBA holds
    # ~1.1 GB while it is converted) and an hour of video sampled at 1/s at the embedding side
    # (~1.2 GB of frames); a worker's model (ViT-B-32: ~1.5 GB RSS) plus one such input fits a
    # 4 GB worker.
    max_decoded_bytes_per_input: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Most bytes one input may hold decoded, estimated from its header before "
        "any pixel is decoded (raster by mode, 16-bit and float included, plus the copies of "
        "its conversion to RGB; for a video, every sampled frame held at once). Over it an "
        "image fails with decompression_bomb, a video with too_large.",
    )
    max_decoded_bytes_per_worker: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Most decoded bytes (the same estimate) a worker's decode threads hold at "
        "once: a decode waits until its share is free; one input over this (but within "
        "max_decoded_bytes_per_input) runs alone.",
    )

    # --- ray and CLI --------------------------------------------------------------------------
    namespace: str = Field(
        default="raylens",
        min_length=1,
        description="Ray namespace of raylens's named actors (queue, index, supervisor, "
        "workers); two systems on one cluster need two namespaces.",
    )
    ray_address: str | None = Field(
        default=None, description="Cluster to join; unset = RAY_ADDRESS, else a local cluster."
    )
    ray_port: int = Field(
        default=6390,
        ge=1,
        le=65535,
        description="Port of the local head node `raylens up` starts (`ray start --port`).",
    )
    dashboard_host: str = Field(
        default="127.0.0.1",
        description="Address the Ray dashboard of the local head node `raylens up` starts binds.",
    )
    dashboard_port: int = Field(
        default=8265,
        ge=1,
        le=65535,
        description="Port of the Ray dashboard of the local head node `raylens up` starts.",
    )
    ingest_chunk: int = Field(default=256, ge=1, description="Jobs submitted per queue call.")
    ingest_max_pending: int = Field(
        default=20_000,
        ge=1,
        description="Most jobs one `raylens ingest` follows at once: beyond it, listing and "
        "hashing wait for jobs to finish, so memory stays bounded for any folder size.",
    )
    ingest_hash_threads: int = Field(
        default=4, ge=1, le=256, description="Threads `raylens ingest` hashes files with."
    )
    ingest_poll_s: float = Field(
        default=0.2,
        gt=0,
        description="How often ingest polls job states (scaled up for big backlogs).",
    )
    ingest_timeout_s: float | None = Field(
        default=None, gt=0, description="Give up waiting for an ingest after this long."
    )

    # --- object storage (`raylens ingest s3://bucket/prefix`) ----------------------------------
    # Credentials, region and endpoint are not raylens settings: they come from the standard
    # AWS_* variables (or an instance role) of each process that touches the bucket.
    ingest_list_page: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Keys asked for per page of an object-storage listing; `raylens ingest` "
        "holds one page at a time, so memory does not grow with the bucket.",
    )
    s3_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Timeout of one object-storage request (a list page, or a read with its "
        "whole body: raise it for large videos on a slow link).",
    )
    s3_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Timeout of connecting to the object-storage endpoint."
    )
    s3_max_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries of a failed object-storage request (5xx, dropped connection, "
        "timeout), with exponential backoff, before it counts as storage_unavailable.",
    )
    s3_retry_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Most time one object-storage request spends retrying.",
    )

    # --- HTTP ingress (Ray Serve) ----------------------------------------------------------------
    http_host: str = Field(default="127.0.0.1", description="Address the Serve HTTP proxy binds.")
    http_port: int = Field(
        default=8000, ge=1, le=65535, description="Port the Serve HTTP proxy listens on."
    )
    http_replicas: int = Field(
        default=1, ge=1, le=256, description="Ingress replicas (the least, when autoscaling)."
    )
    http_max_replicas: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Above http_replicas: Serve autoscales the ingress up to this many replicas "
        "on ongoing requests.",
    )
    http_target_ongoing_requests: float = Field(
        default=16.0,
        gt=0,
        description="Autoscaling aims at this many requests in flight per ingress replica.",
    )
    http_max_ongoing_requests: int = Field(
        default=64,
        ge=1,
        description="Requests one ingress replica handles at once; more are answered 503 "
        "`overloaded` with Retry-After.",
    )
    http_max_queued_requests: int = Field(
        default=256,
        ge=-1,
        description="Requests waiting for a replica before Serve answers 503 (-1: no limit).",
    )
    http_request_timeout_s: float = Field(
        default=120.0, gt=0, description="Serve's end-to-end timeout for one HTTP request."
    )
    max_upload_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="Cap on one upload request body (all files); checked while streaming.",
    )
    max_upload_files: int = Field(default=256, ge=1, description="Files in one upload request.")
    submit_coalesce_jobs: int = Field(
        default=256,
        ge=1,
        le=10_000,
        description="Uploads without an Idempotency-Key that arrive while the ingress's queue "
        "call is in flight go together in its next one, up to this many jobs (a request is "
        "never split; 1: every request alone). No upload waits for others: an idle ingress "
        "sends each at once.",
    )
    api_keys: str | None = Field(
        default=None,
        repr=False,
        description="Comma-separated API keys. When set, every route except /v1/healthz needs "
        "`Authorization: Bearer <key>`.",
    )
    http_allowed_hosts: str | None = Field(
        default=None,
        description="Comma-separated Host header values the ingress answers besides its bind "
        "address (`name` for any port, `name:port` for one; `*` for any). Bound to 127.0.0.1 "
        "only localhost, 127.0.0.1 and [::1] on RAYLENS_HTTP_PORT are answered; bound to "
        "0.0.0.0 any host is, unless this is set. Others get 421 (DNS rebinding).",
    )
    http_allowed_origins: str | None = Field(
        default=None,
        description="Comma-separated browser origins (`scheme://host[:port]`, or `*`) allowed "
        "to call the ingress besides its own; any other Origin header gets 403. Requests "
        "without an Origin header (curl, the Python client) are unaffected.",
    )
    retry_after_s: int = Field(
        default=2, ge=1, description="Retry-After (seconds) sent with 429 and 503 answers."
    )
    idempotency_ttl_s: float = Field(
        default=86_400.0, gt=0, description="How long an Idempotency-Key is remembered."
    )
    keep_uploads: bool = Field(
        default=True,
        description="Keep an uploaded file's bytes once its vectors are stored (so it can be "
        "re-embedded later). false: deleted as soon as no job of that content still needs them "
        "(a failed job retried later then fails source_missing).",
    )
    job_retention_s: float = Field(
        default=0.0,
        ge=0,
        description="Remove done and failed job records this long after they finished (0: "
        "never). Their vectors stay searchable (a delete by sha256 still finds them); what "
        "goes is the record: GET /v1/jobs/{id} answers 404, GET /v1/images no longer lists it, "
        "the same content is embedded again when submitted again, and its uploaded bytes become "
        "an orphan for `raylens gc`. No tombstone is left.",
    )
    webhook_secret: str | None = Field(
        default=None,
        min_length=16,
        description="Secret that signs webhook POSTs (HMAC-SHA256, header Raylens-Signature). "
        "Jobs submitted with a callback_url need it: without it a callback_url is refused.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow callback URLs whose host is a loopback, link-local or private "
        "address (off: such URLs are refused at submit and at each delivery).",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="Seconds one webhook POST may take."
    )
    webhook_retry_s: float = Field(
        default=3600.0,
        ge=0,
        description="How long a failing webhook is retried (exponential backoff) before the "
        "delivery is recorded as failed; the job stays as it is.",
    )
    webhook_backoff_first_s: float = Field(
        default=1.0, gt=0, description="Wait before a failed webhook's first retry (doubling)."
    )
    webhook_backoff_max_s: float = Field(
        default=300.0, gt=0, description="Longest wait between two tries of one webhook."
    )
    webhook_concurrency: int = Field(
        default=16, ge=1, le=1024, description="Webhook deliveries in flight at once."
    )
    runs_keep: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Ingest runs listed by GET /v1/runs and `raylens runs` (the newest; older "
        "records stay readable by id).",
    )
    run_update_s: float = Field(
        default=2.0,
        gt=0,
        description="How often an ingest writes its run's progress (counts, images/s, ETA).",
    )
    events_retention_s: float = Field(
        default=3600.0,
        ge=0,
        description="How long job events (one per state transition: GET /v1/events) are kept "
        "in the job store; a resume from an older Last-Event-ID is answered 410 "
        "events_expired, never with a silent gap. 0 turns events off (no event is written).",
    )
    events_page: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="Most events one read of the job store returns to an event stream.",
    )
    events_stream_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="An event stream (GET /v1/events) ends after this long, at most 5 s less "
        "than http_request_timeout_s; clients reconnect with Last-Event-ID (EventSource does "
        "so by itself, Client.events too) and miss nothing.",
    )
    events_max_job_ids: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most job ids one event stream may filter by (job_id parameters, or the "
        "jobs of an Idempotency-Key).",
    )
    events_keepalive_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="An event stream with nothing to send sends an SSE comment this often, so "
        "proxies keep the connection open and clients notice a dead one.",
    )
    gc_min_age_s: float = Field(
        default=3600.0,
        ge=0,
        description="`raylens gc` never removes a payload written less than this long ago (an "
        "upload between its payload write and its job write looks like an orphan).",
    )
    search_max_top_k: int = Field(
        default=1000,
        ge=1,
        description="Largest top_k a search may ask for (image, text and face searches).",
    )
    search_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a query waits for a worker and Qdrant."
    )

    # --- fault drills ----------------------------------------------------------------------
    fault_inject: str | None = Field(
        default=None,
        description="Fault drills only: 'poison:<sha256 prefix>' makes inference raise for "
        "that content; 'hang:<seconds>' stalls every inference call; "
        "'hang_once:<seconds>@<worker name>' stalls that worker once; 'crash:<sha256 prefix>' "
        "kills the worker process (SIGSEGV) when it decodes that content. Never set in "
        "production.",
    )

    @field_validator("data_dir", "clip_model_config", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator(
        "redis_url",
        "qdrant_url",
        "api_keys",
        "http_allowed_hosts",
        "http_allowed_origins",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("api_keys", mode="after")
    @classmethod
    def _some_key(cls, value: str | None) -> str | None:
        if value is not None and not split_list(value):
            raise ValueError("lists no key (only blanks and commas); unset it to run without auth")
        return value

    @field_validator("http_allowed_hosts", mode="after")
    @classmethod
    def _host_list(cls, value: str | None) -> str | None:
        for host in split_list(value):
            if host != "*" and (
                split_host(host) is None or "/" in host or "@" in host or " " in host
            ):
                raise ValueError(f"{host!r} is not a host name or host:port (no scheme, no path)")
        return value

    @field_validator("http_allowed_origins", mode="after")
    @classmethod
    def _origin_list(cls, value: str | None) -> str | None:
        for origin in split_list(value):
            scheme, sep, rest = origin.partition("://")
            if origin != "*" and (
                scheme.lower() not in ("http", "https")
                or not sep
                or not rest
                or "/" in rest
                or "@" in rest
            ):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port] with no path, or *"
                )
        return value

    @field_validator("redis_url", mode="after")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _replica_bounds(self) -> Settings:
        if self.http_max_replicas is not None and self.http_max_replicas < self.http_replicas:
            raise ValueError(
                f"RAYLENS_HTTP_MAX_REPLICAS={self.http_max_replicas} is below "
                f"RAYLENS_HTTP_REPLICAS={self.http_replicas}"
            )
        return self

    @model_validator(mode="after")
    def _worker_bounds(self) -> Settings:
        if self.worker_min > self.worker_max:
            raise ValueError(
                f"RAYLENS_MIN_WORKERS={self.worker_min} is above RAYLENS_MAX_WORKERS="
                f"{self.worker_max}"
            )
        return self

    @model_validator(mode="after")
    def _payloads_need_redis(self) -> Settings:
        if self.payload_store == "redis" and not self.redis_url:
            raise ValueError(
                "RAYLENS_PAYLOAD_STORE=redis needs RAYLENS_REDIS_URL to be set as well"
            )
        return self

    # --- derived -------------------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        return self.clip_pretrained.lower() == "none"

    @property
    def uses_redis_payloads(self) -> bool:
        if self.payload_store == "auto":
            return self.redis_url is not None
        return self.payload_store == "redis"

    @property
    def worker_min(self) -> int:
        return (
            self.min_workers
            if self.min_workers is not None
            else min(self.num_workers, self.max_workers or self.num_workers)
        )

    @property
    def worker_max(self) -> int:
        return (
            self.max_workers
            if self.max_workers is not None
            else max(self.num_workers, self.min_workers or self.num_workers)
        )

    @property
    def scaling(self) -> bool:
        """Whether the supervisor adds and removes workers (max_workers above min_workers)."""
        return self.worker_max > self.worker_min

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def payload_dir(self) -> Path:
        return self.data_dir / "payloads"

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def local_ray_address(self) -> str:
        """Where `raylens up` starts its own head node (loopback only)."""
        return f"127.0.0.1:{self.ray_port}"

    @property
    def api_key_list(self) -> list[str]:
        return split_list(self.api_keys)

    @property
    def http_allowed_host_list(self) -> list[str]:
        return split_list(self.http_allowed_hosts)

    @property
    def http_allowed_origin_list(self) -> list[str]:
        return split_list(self.http_allowed_origins)

    @property
    def queue_actor_name(self) -> str:
        return "raylens-queue"

    @property
    def index_actor_name(self) -> str:
        return "raylens-index"

    @property
    def supervisor_actor_name(self) -> str:
        return "raylens-supervisor"

    @property
    def webhooks_actor_name(self) -> str:
        return "raylens-webhooks"

    def worker_name(self, i: int) -> str:
        return f"raylens-worker-{i}"


def split_list(value: str | None) -> list[str]:
    """A comma-separated setting as its non-blank items, stripped."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name`, `name:port`, `[v6]` or `[v6]:port` as (lower-case name, port); None if malformed."""
    value = value.strip().lower()
    port: str | None = None
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name = value  # a name, or a bare IPv6 address as in a bind address
    name = name.rstrip(".")
    if not name:
        return None
    if port is None:
        return name, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return name, int(port)


def env_name(loc: tuple[object, ...]) -> str:
    """The environment variable behind a pydantic error location."""
    if not loc:
        return f"{ENV_PREFIX}*"
    return ENV_PREFIX + "__".join(str(part) for part in loc).upper()


def load_settings(**overrides: object) -> Settings:
    """Read RAYLENS_* once (entry points only) and fail with the variable names on bad values."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = env_name(err["loc"]) if err["loc"] else "settings"
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"{name}: {err['msg']}{shown}")
        raise SettingsError("invalid raylens settings:\n  " + "\n  ".join(lines)) from None
    except PydanticSettingsError as exc:  # a value that is not the JSON a dict/list field needs
        field = str(exc).split('field "', 1)[-1].split('"', 1)[0]
        raise SettingsError(
            f"invalid raylens settings:\n  {env_name((field,))}: not valid JSON ({exc})"
        ) from None
