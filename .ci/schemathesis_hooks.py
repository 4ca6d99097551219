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
