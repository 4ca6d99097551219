"""Schemathesis hooks for fuzzing the broker in CI (.ci/schemathesis.toml).

`POST /workers/{id}/request-task?wait=S` holds the request up to S seconds
(a long poll) while there is no work. Valid waits are shortened to at most
half a second, in every phase, so that the run finishes in minutes; invalid
ones (negative, over 60, not a number) are sent as generated.
"""

import schemathesis

MAX_FUZZ_WAIT = 0.5


def _shortened(wait):
    if isinstance(wait, bool):
        return wait
    try:
        seconds = float(wait)
    except (TypeError, ValueError):
        return wait
    if 0 < seconds <= 60:
        return min(seconds, MAX_FUZZ_WAIT)
    return wait


@schemathesis.hook
def before_call(context, case, kwargs):
    if isinstance(case.query, dict) and "wait" in case.query:
        case.query["wait"] = _shortened(case.query["wait"])


# CPython 3.11 before 3.11.8 can raise SystemError ("AST constructor
# recursion depth mismatch", python/cpython#106905) from ast.parse in a
# worker thread. Hypothesis parses source only to describe a filter's lambda
# in a strategy's repr, which is cosmetic, so a failed description falls
# back to a plain one instead of ending the run with a Runtime Error.
from hypothesis.internal import lambda_sources as _lambda_sources

_describe_lambda = _lambda_sources.lambda_description


def _lambda_description_or_plain(f):
    try:
        return _describe_lambda(f)
    except SystemError:
        return "lambda: <source not read>"


_lambda_sources.lambda_description = _lambda_description_or_plain
