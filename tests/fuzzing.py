"""schemathesis against a running endpoint's OpenAPI: one generation mode per process.

The fuzzing test runs the schema-valid and the schema-breaking mode side by side, one here in a
subprocess (``python tests/fuzzing.py URL MODE N``, which prints the requests sent per path as
JSON), one in the test's process: example generation is pure Python and takes about two thirds
of the client's time, so one process would leave the second core idle while the server waits.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

SKIPPED = ("/", "/docs", "/redoc", "/openapi.json")


def fuzz(url: str, mode: str, max_examples: int) -> Counter[str]:
    """Send ``max_examples`` generated requests of ``mode`` ("positive" or "negative") to the
    endpoint at ``url``; fails on a 5xx or a response outside its documented shape.

    Returns:
        The requests sent, by path.
    """
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]  # fmt: skip
    schema = schemathesis.openapi.from_url(url + "openapi.json")
    sent: Counter[str] = Counter()
    session = requests.Session()

    @given(case=schema.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case) -> None:  # type: ignore[no-untyped-def]
        if case.path in SKIPPED:
            return
        sent[case.path] += 1
        case.call_and_validate(session=session, checks=checks, timeout=60)

    run()
    return sent


if __name__ == "__main__":
    print(json.dumps(fuzz(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
