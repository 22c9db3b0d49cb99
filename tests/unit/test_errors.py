from __future__ import annotations

import re
from pathlib import Path

from genserve.errors import ERROR_TABLE, ErrorCode, GenserveError, as_genserve_error, without_paths

SPEC_CODES = {
    "MODEL_NOT_FOUND",
    "IMAGE_NOT_FOUND",
    "INVALID_INPUT",
    "ENCODING_FAILED",
    "SAMPLING_FAILED",
    "DECODING_FAILED",
    "OUTPUT_DIR_NOT_WRITABLE",
}
GRPC_CODES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}  # fmt: skip


def test_every_code_is_in_the_table_once() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)
    assert {code.value for code in ErrorCode} >= SPEC_CODES
    exit_codes = [m.exit_code for m in ERROR_TABLE.values()]
    assert len(set(exit_codes)) == len(exit_codes) and 0 not in exit_codes and 2 not in exit_codes
    for mapping in ERROR_TABLE.values():
        assert mapping.grpc_status in GRPC_CODES
        assert 400 <= mapping.http_status < 600


def test_error_json_has_the_spec_fields() -> None:
    body = GenserveError(ErrorCode.MODEL_NOT_FOUND, "VAE model not found: x", field="vae_model_name").to_dict(
        "r1"
    )
    assert body["status"] == "error" and body["request_id"] == "r1"
    assert body["error_code"] == "MODEL_NOT_FOUND" and body["error_message"] == "VAE model not found: x"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])
    assert body["details"] == {"field": "vae_model_name"}


def test_unexpected_exceptions_become_internal() -> None:
    wrapped = as_genserve_error(ValueError("boom"))
    assert wrapped.code is ErrorCode.INTERNAL and "boom" in wrapped.message
    original = GenserveError(ErrorCode.TIMEOUT, "late")
    assert as_genserve_error(original) is original


def test_unexpected_errors_keep_their_cause_but_not_server_paths(tmp_path: Path) -> None:
    weights = tmp_path / "models" / "vae" / "broken.safetensors"
    wrapped = as_genserve_error(OSError(f"Unable to load weights from checkpoint file '{weights}'"))
    assert "broken.safetensors" in wrapped.message and str(tmp_path) not in wrapped.message
    assert without_paths("POST /api/v1/models/vae/x/unload: 404") == "POST /api/v1/models/vae/x/unload: 404"
