"""The model's Prometheus metrics, served at /metrics next to BentoML's own.

BentoML runs prometheus_client in multiprocess mode, so these are plain module-level
prometheus_client objects; gauges say how to merge across workers.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .errors import ERROR_STATUS

NAMESPACE = "bento_fleet"
# Bounded label cardinality: only the most frequent classes get a label of their own.
MAX_CLASS_LABELS = 1000

INFERENCE_SECONDS = Histogram(
    "inference_seconds",
    "Forward pass time per batch",
    namespace=NAMESPACE,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
)
BATCH_SIZE = Histogram(
    "batch_size",
    "Images per forward pass",
    namespace=NAMESPACE,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_SECONDS = Histogram(
    "queue_wait_seconds",
    "Time an image waited for its batch to start",
    namespace=NAMESPACE,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
QUEUE_DEPTH = Gauge(
    "queue_depth",
    "Images waiting or running in the batcher",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
DECODE_BACKLOG_SECONDS = Gauge(
    "decode_backlog_seconds",
    "Estimated seconds of admitted images waiting or being decoded, per decode lane",
    ["lane"],
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
QUEUE_CAPACITY = Gauge(
    "queue_capacity",
    "Images the batcher admits at most (batching.max_queue_size); depth / capacity is saturation",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
PREPROCESS_SECONDS = Histogram(
    "preprocess_seconds",
    "Decode + resize + normalise time per image",
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
DEVICE_DECODED_IMAGES = Counter(
    "device_decoded_images",
    "JPEGs decoded with their batch on the model's device (jpeg_decode), by outcome: decoded, "
    "or fallback (the device refused it and Pillow decoded it, or answered its client error)",
    ["outcome"],
    namespace=NAMESPACE,
)
CONFIDENCE = Histogram(
    "prediction_confidence",
    "Top-1 confidence of each prediction, by variant and role (serve or shadow)",
    ["variant", "role"],
    namespace=NAMESPACE,
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
PREDICTIONS = Counter(
    "predictions",
    "Predictions by top-1 class and variant (shadow predictions included, by role)",
    ["label", "variant", "role"],
    namespace=NAMESPACE,
)
PREDICTION_LATENCY = Histogram(
    "prediction_latency_seconds",
    "Request arrival to answer, by variant and role (a shadow's from the same arrival)",
    ["variant", "role"],
    namespace=NAMESPACE,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SHADOW_FAILURES = Counter(
    "shadow_failures",
    "Shadow runs that failed (never seen by clients), by variant and reason",
    ["variant", "reason"],
    namespace=NAMESPACE,
)
VARIANT_UP = Gauge(
    "variant_up",
    "1 when the variant's model is loaded and warm, 0 when it failed to load",
    ["variant", "role"],
    namespace=NAMESPACE,
    multiprocess_mode="livemin",
)
FEEDBACK = Counter(
    "feedback",
    "True labels received on POST /feedback, by the variant that had answered",
    ["variant"],
    namespace=NAMESPACE,
)
# Computed from the database, so every worker reports the same value: keep the latest.
ACCURACY = Gauge(
    "accuracy_ratio",
    "Share of labelled predictions whose true class was in the top k, over the feedback window",
    ["model_version", "variant", "role", "k"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
ACCURACY_SAMPLES = Gauge(
    "accuracy_samples",
    "Labelled predictions in the accuracy window",
    ["model_version", "variant", "role"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
DRIFT_SCORE = Gauge(
    "drift_score",
    "Latest drift statistic per feature: KS distance (continuous) or PSI (top class)",
    ["model_version", "feature", "test"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
DRIFT_DETECTED = Gauge(
    "drift_detected",
    "1 when the feature drifted from the model version's reference in the latest run",
    ["model_version", "feature"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
DRIFT_LAST_RUN = Gauge(
    "drift_last_run_timestamp_seconds",
    "When the drift job last compared a window (Unix time)",
    ["model_version"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
REJECTED = Counter(
    "rejected_inputs",
    "Requests refused, by error code",
    ["code"],
    namespace=NAMESPACE,
)
GPU_MEMORY_BYTES = Gauge(
    "gpu_memory_allocated_bytes",
    "CUDA memory allocated by the model's worker",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
GPU_MEMORY_TOTAL_BYTES = Gauge(
    "gpu_memory_total_bytes",
    "Total memory of the worker's CUDA device",
    namespace=NAMESPACE,
    multiprocess_mode="max",
)
PREDICTION_LOG_PENDING = Gauge(
    "prediction_log_pending",
    "Prediction records not yet in the database (memory + spool)",
    namespace=NAMESPACE,
    multiprocess_mode="livesum",
)
PREDICTION_LOG_DROPPED = Counter(
    "prediction_log_dropped",
    "Prediction records lost: memory bound reached while the database and the spool failed",
    namespace=NAMESPACE,
)
PREDICTION_LOG_DEAD_LETTERS = Counter(
    "prediction_log_dead_letters",
    "Prediction records the database refused for good, kept in the dead-letter file",
    namespace=NAMESPACE,
)

# Pre-create the error series so dashboards see zeros, not gaps.
for _code in ERROR_STATUS:
    REJECTED.labels(code=_code)


def class_label(label: str, class_index: int) -> str:
    return label if class_index < MAX_CLASS_LABELS else "other"
