"""A bounded schemathesis run of the OpenAPI document: whatever it generates, schema-valid or not,
the server answers with a documented status, content type and body, and never a 5xx."""

from __future__ import annotations

import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from dyhead_serve.server import ServerSettings, create_app

# A longer, randomised run: FUZZ_EXAMPLES=200 FUZZ_RANDOM=1 pytest tests/server/test_fuzz.py
EXAMPLES_PER_OPERATION_AND_MODE = int(os.environ.get("FUZZ_EXAMPLES", "10"))
DERANDOMIZE = not os.environ.get("FUZZ_RANDOM")
API_KEY = "fuzz-key"  # with a key, schemathesis also checks that wrong keys are refused
REJECTIONS = ["400", "401", "404", "405", "406", "409", "413", "415", "422"]
# Schema-valid bytes are rarely a decodable image: there a 400 is the right answer.
IMAGE_OPERATIONS = ("/v1/detect", "/v1/detect/annotated", "/v2/models/{name}/infer")


@pytest.fixture(scope="module")
def api_schema(served_backend):
    app = create_app(ServerSettings(warmup=False, max_files=4, api_key=API_KEY), backend=served_backend)
    config = schemathesis.config.SchemathesisConfig.from_dict(
        # 413 (too large, too many files) is as much a rejection as 400 or 422
        {"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}}
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)  # starts the lifespan
    deadline = time.monotonic() + 30
    while not app.state.service.ready and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.state.service.ready
    return schema


def make_check(operation, mode: GenerationMode, excluded: list):
    """A hypothesis test sending ``operation``'s generated cases and validating the answers."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers={"X-API-Key": API_KEY}, excluded_checks=excluded)

    return check


def test_openapi_schema_holds_under_fuzzing(api_schema):
    # One test driving each operation (schemathesis' own pytest parametrisation needs the app at
    # import time); derandomised, so that CI explores the same bounded set of cases every run.
    failures = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        excluded = [positive_data_acceptance] if operation.path in IMAGE_OPERATIONS else []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                make_check(operation, mode, excluded)()
            except Unsatisfiable:  # no parameters, so nothing to make invalid
                continue
            except Exception as exc:  # collect all operations' failures, not just the first
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
