#!/usr/bin/env python3
"""Independent FHIR R4 (4.0.1) check of the hub's output.

The hub builds its JSON with fhir-sdk (Rust, R4B models); this script checks
it with a different implementation, fhir.resources 6.1.0 (Python, R4 4.0.1),
so a mistake in one is not hidden by the same mistake in the other.

Input on stdin: a JSON array of resources, a Bundle (its entries' resources
are checked one by one, then the Bundle as a whole), or a single resource.
Each resource is parsed with its fhir.resources model; unknown elements,
wrong types, missing required elements and bad primitive formats fail.

Output: one line per resource ("ok ..." or "FAIL ..." followed by the
errors). Exit status: 0 all valid, 1 some invalid, 2 unusable input.
"""

import json
import sys

from fhir.resources import construct_fhir_element
from fhir.resources.fhirabstractmodel import FHIRAbstractModel


def label(index, resource):
    if not isinstance(resource, dict):
        return f"[{index}] (not an object)"
    rtype = resource.get("resourceType", "?")
    rid = resource.get("id", "?")
    return f"[{index}] {rtype}/{rid}"


def check(resource):
    """Returns a list of error strings (empty when the resource is valid)."""
    if not isinstance(resource, dict):
        return ["a resource must be a JSON object"]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return ["resourceType is missing"]
    try:
        construct_fhir_element(rtype, resource)
    except LookupError as exc:
        return [f"unknown resourceType {rtype!r}: {exc}"]
    except Exception as exc:  # pydantic ValidationError and friends
        return [line for line in str(exc).splitlines() if line.strip()]
    return []


def main():
    # Unknown elements must fail; fhir.resources forbids them by default,
    # but say so here rather than depend on that default silently.
    extra = str(getattr(FHIRAbstractModel.Config, "extra", ""))
    if "forbid" not in extra:
        print(f"validator misconfigured: unknown elements are not rejected ({extra})")
        return 2

    try:
        data = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        print(f"input is not JSON: {exc}")
        return 2

    if isinstance(data, list):
        resources = data
    elif isinstance(data, dict) and data.get("resourceType") == "Bundle":
        resources = [
            entry.get("resource")
            for entry in data.get("entry", [])
            if isinstance(entry, dict) and "resource" in entry
        ]
        resources.append(data)
    elif isinstance(data, dict):
        resources = [data]
    else:
        print("input must be a JSON array of resources, a Bundle or a resource")
        return 2

    failed = 0
    for index, resource in enumerate(resources):
        errors = check(resource)
        if errors:
            failed += 1
            print(f"FAIL {label(index, resource)}")
            for err in errors:
                print(f"    {err}")
        else:
            print(f"ok   {label(index, resource)}")
    print(f"{len(resources) - failed} valid, {failed} invalid")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
