"""The exception tree: one root, a branch per stage, retryable vs permanent as types.

A `reason` on every event-level error is a stable machine code: it becomes the DLQ's
`error.reason` header and a metric label, so it must come from a small fixed set.
"""

from __future__ import annotations


class ProfileConsumerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(ProfileConsumerError):
    """The configuration or a file it names is invalid. Carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class EventError(ProfileConsumerError):
    """One event cannot be processed; it goes to the DLQ with `stage` and `reason`."""

    stage: str = "unknown"

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class DecodeError(EventError):
    """The record's bytes are not a valid event (wire format, schema, Avro body)."""

    stage = "decode"


class MappingError(EventError):
    """The event decoded but the rules cannot turn it into a valid profile update."""

    stage = "map"


class RegistryUnavailable(ProfileConsumerError):
    """The Schema Registry could not answer: retry the record later, never dead-letter it."""


class Unreachable(ProfileConsumerError):
    """A command's dependency (the broker, the Schema Registry) did not answer in time."""


class TopicMissing(ProfileConsumerError):
    """A topic the app needs is absent and `kafka.create_topics` forbids creating it."""


class DeliveryError(ProfileConsumerError):
    """Sending an update to Target failed."""


class RetryableDeliveryError(DeliveryError):
    """Worth trying again: 408, 429, 5xx, timeouts, connection errors."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(message)


class PermanentDeliveryError(DeliveryError, EventError):
    """Target refused the update for good (4xx, success=false, too large, retries exhausted)."""

    stage = "send"

    def __init__(
        self,
        reason: str,
        message: str,
        http_status: int | None = None,
        body: bytes = b"",
    ) -> None:
        self.http_status = http_status
        self.body = body[:512]
        EventError.__init__(self, reason, message)


class HttpTransportError(ProfileConsumerError):
    """No HTTP answer came back (consumer/target/http.py); the client makes it retryable."""


class HttpConnectionError(HttpTransportError):
    """Connecting failed, or the connection broke or spoke something other than HTTP/1.1."""


class HttpTimeout(HttpTransportError):
    """No free connection, no connection or no complete answer within the timeout."""


class DeadLetterError(ProfileConsumerError):
    """The DLQ could not be written: the event's offset must not be committed."""


class BulkError(ProfileConsumerError):
    """A call to Target's Bulk Profile Update API failed (consumer/bulk/)."""


class RetryableBulkError(BulkError):
    """Worth trying again, never a reason to dead-letter: 408, 429, 503 (Target's answer
    beyond 50 batch calls a minute), other 5xx, timeouts, connection errors, and an answer
    that cannot be read (rows are idempotent: sending a batch again is safe)."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(message)


class BulkAnswerError(RetryableBulkError):
    """A submit or status answer we cannot use (not XML, elements missing, a bad URL)."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_answer", message)


class PermanentBulkError(BulkError):
    """Target refused the call for good (`success` false, a 4xx other than 408 and 429).
    For a submit, the batch is refused: its events go to the DLQ with `reason`."""

    def __init__(
        self, reason: str, message: str, http_status: int | None = None, body: bytes = b""
    ) -> None:
        self.reason = reason
        self.http_status = http_status
        self.body = body[:512]
        super().__init__(message)


class InvalidBulkRow(BulkError, EventError):
    """One event no batch may carry (an empty identity, a reserved attribute name)."""

    stage = "send"
