"""The error contract every failure in imagenodes goes through.

A leaf module: it imports nothing of ours, so every layer (engine, workspace,
connections, library, host, frontends) can raise these without an import cycle.

Builders render errors next to the offending form field, so every error carries a
stable ``code`` (from the seeds' error tables), the ``field`` it concerns, a message
that names the allowed range, and the seed's "solution" text for the user.  Nothing
else may escape ``Host.run``: unknown exceptions are wrapped as GENERATION_FAILED.
"""

from __future__ import annotations

from typing import Any

#: Solution texts, taken from the seeds' error tables where they have one.
SOLUTIONS: dict[str, str] = {
    "EMPTY_PROMPT": "Provide a descriptive text prompt for the image you want to generate",
    "INVALID_GUIDANCE_SCALE": "Set guidance scale between 0 and 15 (recommended: 7-12)",
    "INVALID_STEPS": "Reduce steps to 50 or less (recommended: 20-40 for balance of quality and speed)",
    "BATCH_SIZE_EXCEEDED": "Reduce batch_size to 8 or fewer images per generation",
    "INVALID_ASPECT_RATIO": "Choose from supported ratios (1:1, 16:9, 9:16, etc.) with HD or FHD variants",
    "INVALID_STRENGTH": "Set strength between 0.01 and 1.0 (lower preserves more of source image)",
    "CONNECTION_ERROR": "Verify your PixelML connection is properly configured with valid API key",
    "SOURCE_IMAGE_ERROR": "Provide a valid, publicly accessible image URL in a supported format",
    "GENERATION_FAILED": "Simplify your prompt, adjust strength/guidance parameters, or try different source image",
    "GENERATION_TIMEOUT": "Reduce steps count, batch size, or resolution to speed up generation",
    "INVALID_INPUT": "Fix the named field so it matches the node's input schema",
    "UNKNOWN_NODE": "Pick a node id listed by `imagenodes nodes` / Host.catalog()",
    "CANCELLED": "The run was cancelled; start it again to get a result",
    "INVALID_DIMENSIONS": "Set width and height within the allowed range",
    "INVALID_SESSION": "Create a session first, or pass the id of an active session",
    "ENGINE_NOT_INITIALIZED": "Run check-engine-status first and make sure the model can be loaded",
    "UNKNOWN_TRAINING": "Register the training with `imagenodes trainings add <uuid> <path>` first",
    "UNKNOWN_INFERENCE_PACK": "Create the pack with `imagenodes packs create` first",
    "UNKNOWN_JOB": "List jobs with GET /v1/jobs; deleted jobs are gone",
    "JOB_CONFLICT": "Use a new job id for a different request, or wait until the job has finished",
    "QUEUE_FULL": "Retry after the number of seconds in Retry-After, when the queue has room",
    "SERVICE_UNAVAILABLE": "The server is starting or shutting down; retry shortly",
    "UNAUTHORIZED": "Send the server's token as 'Authorization: Bearer <token>'",
    "FORBIDDEN": "Call the API from the server's own origin or one allowed with --cors-origin",
    "PAYLOAD_TOO_LARGE": "Send a smaller body (uploads: a smaller image)",
    "UNSUPPORTED_MEDIA_TYPE": "Send application/json (multipart/form-data or an image type to /v1/uploads)",
    "FILE_NOT_FOUND": "Use a file reference the service returned (runs/… or uploads/…)",
    "NOT_FOUND": "No such endpoint or method; the API is described at /openapi.json",
    "INVALID_FLOW": "Fix the named part of the flow document (steps, references, input schema)",
    "INVALID_JSON": "Send a well-formed UTF-8 JSON body within the documented nesting depth",
    "INVALID_CURSOR": "Use the 'next' cursor of the previous page as it was given",
    "UNTRUSTED_HOST": "Call the server by a loopback name or one allowed with --allowed-host",
}

#: Error codes that mean "the caller gave bad input/config" (CLI exit code 2).
USER_ERROR_CODES = frozenset(
    {
        "EMPTY_PROMPT",
        "INVALID_GUIDANCE_SCALE",
        "INVALID_STEPS",
        "BATCH_SIZE_EXCEEDED",
        "INVALID_ASPECT_RATIO",
        "INVALID_STRENGTH",
        "CONNECTION_ERROR",
        "SOURCE_IMAGE_ERROR",
        "INVALID_INPUT",
        "UNKNOWN_NODE",
        "INVALID_DIMENSIONS",
        "INVALID_SESSION",
        "UNKNOWN_TRAINING",
        "UNKNOWN_INFERENCE_PACK",
        "UNKNOWN_JOB",
        "JOB_CONFLICT",
        "QUEUE_FULL",
        "UNAUTHORIZED",
        "FORBIDDEN",
        "PAYLOAD_TOO_LARGE",
        "UNSUPPORTED_MEDIA_TYPE",
        "FILE_NOT_FOUND",
        "NOT_FOUND",
        "INVALID_FLOW",
        "INVALID_JSON",
        "INVALID_CURSOR",
        "UNTRUSTED_HOST",
    }
)


class ImageNodesError(Exception):
    """Base of every error imagenodes raises on purpose.

    Subclasses only pin a default ``code``; callers branch on ``code`` (stable,
    documented), never on the message text.
    """

    code: str = "GENERATION_FAILED"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        solution: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field = field
        self.solution = solution if solution is not None else SOLUTIONS.get(self.code, "")
        self.details = details or {}

    @property
    def is_user_error(self) -> bool:
        """True when the caller can fix it by changing input or configuration."""
        return self.code in USER_ERROR_CODES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form used by the CLI, run.json and the MCP server."""
        out: dict[str, Any] = {
            "code": self.code,
            "field": self.field,
            "message": self.message,
            "solution": self.solution,
        }
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        where = f" [{self.field}]" if self.field else ""
        return f"{self.code}{where}: {self.message}"


class InputError(ImageNodesError):
    """Input failed validation (wrong type, range, unknown or missing field)."""

    code = "INVALID_INPUT"


class UnknownNodeError(ImageNodesError):
    code = "UNKNOWN_NODE"


class ConnectionConfigError(ImageNodesError):
    """A connection is missing, invalid, or points at a model we cannot load.

    Named so it cannot shadow the builtin ``ConnectionConfigError`` (a socket failure)."""

    code = "CONNECTION_ERROR"


class SourceImageError(ImageNodesError):
    code = "SOURCE_IMAGE_ERROR"


class GenerationFailed(ImageNodesError):
    code = "GENERATION_FAILED"


class GenerationTimeout(ImageNodesError):
    code = "GENERATION_TIMEOUT"


class Cancelled(ImageNodesError):
    """The run was cancelled through ``Host.cancel`` or a cancel token."""

    code = "CANCELLED"


class PluginError(ImageNodesError):
    """A plugin broke the registry contract (duplicate id, bad hook, failed import)."""

    code = "PLUGIN_ERROR"


class UnknownTraining(ImageNodesError):
    """A ``trainingId`` that is not registered in the workspace (or not a UUID)."""

    code = "UNKNOWN_TRAINING"


class UnknownInferencePack(ImageNodesError):
    """An ``inferencePackId`` that names no stored pack (or is not a UUID)."""

    code = "UNKNOWN_INFERENCE_PACK"


class InvalidSession(ImageNodesError):
    """A ``sessionId`` that was never created (or is not a valid id)."""

    code = "INVALID_SESSION"


class EngineNotInitialized(ImageNodesError):
    """The engine cannot load the connection's model, so nothing can be generated."""

    code = "ENGINE_NOT_INITIALIZED"


class InvalidDimensions(ImageNodesError):
    """Width/height outside what a node accepts."""

    code = "INVALID_DIMENSIONS"


class ServiceError(ImageNodesError):
    """An HTTP-service condition (unknown job, conflict, full queue, auth, caps)."""


class UnknownJob(ServiceError):
    code = "UNKNOWN_JOB"


class JobConflict(ServiceError):
    """A job id exists with another body, or the job is in the wrong state."""

    code = "JOB_CONFLICT"


class QueueFull(ServiceError):
    code = "QUEUE_FULL"


class ServiceUnavailable(ServiceError):
    code = "SERVICE_UNAVAILABLE"


class Unauthorized(ServiceError):
    code = "UNAUTHORIZED"


class Forbidden(ServiceError):
    code = "FORBIDDEN"


class PayloadTooLarge(ServiceError):
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(ServiceError):
    code = "UNSUPPORTED_MEDIA_TYPE"


class FileNotFound(ServiceError):
    code = "FILE_NOT_FOUND"


class NotFound(ServiceError):
    """No such endpoint (or not with that method)."""

    code = "NOT_FOUND"


class InvalidFlow(ImageNodesError):
    """A flow document that cannot run: its structure, a reference, its input schema."""

    code = "INVALID_FLOW"


class InvalidJson(ServiceError):
    """A request body that is not JSON: bad UTF-8, bad syntax, nested too deep."""

    code = "INVALID_JSON"


class InvalidCursor(ServiceError):
    """A paging cursor the service did not hand out (or one tampered with)."""

    code = "INVALID_CURSOR"


class UntrustedHost(ServiceError):
    """A request addressed to a host name the server does not answer for (DNS
    rebinding: a page on another name reaching a loopback server)."""

    code = "UNTRUSTED_HOST"


__all__ = [
    "SOLUTIONS",
    "USER_ERROR_CODES",
    "Cancelled",
    "ConnectionConfigError",
    "EngineNotInitialized",
    "FileNotFound",
    "Forbidden",
    "GenerationFailed",
    "GenerationTimeout",
    "ImageNodesError",
    "InputError",
    "InvalidCursor",
    "InvalidDimensions",
    "InvalidFlow",
    "InvalidJson",
    "InvalidSession",
    "JobConflict",
    "NotFound",
    "PayloadTooLarge",
    "PluginError",
    "QueueFull",
    "ServiceError",
    "ServiceUnavailable",
    "SourceImageError",
    "Unauthorized",
    "UnknownInferencePack",
    "UnknownJob",
    "UnknownNodeError",
    "UnknownTraining",
    "UnsupportedMediaType",
    "UntrustedHost",
]
