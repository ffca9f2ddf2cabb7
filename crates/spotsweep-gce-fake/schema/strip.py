"""Writes compute.v1.json beside this script: the Compute v1 discovery subset (the one in the
project's shared briefs, extracted from google-api-python-client's discovery cache) reduced to
its formats: methods (HTTP method, path, parameters with their location, type, pattern, enum),
and schemas (types, formats, enums, references, required annotations). Descriptions are
dropped; a property whose description marks it "[Output Only]" gets `"outputOnly": true`.

    python3 crates/spotsweep-gce-fake/schema/strip.py ../shared/gce/compute.v1.subset.json
"""

import hashlib
import json
import sys
from pathlib import Path

KEEP_FIELD = {"type", "format", "enum", "$ref", "items", "additionalProperties", "properties",
              "annotations", "readOnly", "pattern", "location", "required", "repeated", "default"}


def field(node: dict) -> dict:
    out = {k: v for k, v in node.items() if k in KEEP_FIELD and k not in ("items", "additionalProperties", "properties")}
    if str(node.get("description", "")).lstrip().startswith("[Output Only]") or node.get("readOnly"):
        out["outputOnly"] = True
    for k in ("items", "additionalProperties"):
        if isinstance(node.get(k), dict):
            out[k] = field(node[k])
    if "properties" in node:
        out["properties"] = {name: field(p) for name, p in node["properties"].items()}
    return out


def main() -> None:
    src = Path(sys.argv[1])
    raw = src.read_bytes()
    doc = json.loads(raw)
    methods = {}
    for res_name, res in doc["resources"].items():
        for m_name, m in res.get("methods", {}).items():
            methods[f"{res_name}.{m_name}"] = {
                "httpMethod": m["httpMethod"],
                "path": m["path"],
                "parameters": {p: field(v) for p, v in m.get("parameters", {}).items()},
                **({"request": m["request"]["$ref"]} if "request" in m else {}),
                **({"response": m["response"]["$ref"]} if "response" in m else {}),
            }
    schemas = {name: field(s) for name, s in doc["schemas"].items()}
    out = {
        "x-provenance": {
            "source": "compute.v1 discovery document, subset in the shared briefs",
            "revision": doc.get("revision"),
            "subset_sha256": hashlib.sha256(raw).hexdigest(),
        },
        "servicePath": doc["servicePath"],
        "methods": methods,
        "schemas": schemas,
    }
    dest = Path(__file__).with_name("compute.v1.json")
    dest.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{dest}: {dest.stat().st_size} bytes, {len(methods)} methods, {len(schemas)} schemas")


if __name__ == "__main__":
    main()
