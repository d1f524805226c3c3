"""k8s_check.py -- an offline schema check of Kubernetes manifests.

Usage: /usr/bin/python3 k8s_check.py FILE.yaml...  (prints one line per
problem, exits 1 if any). The schema of the built-in kinds is that of
Debian's python3-kubernetes (the API's OpenAPI models: every field's type,
which fields are required); an unknown field, a wrong type or a missing
required field is a problem. ServiceMonitor (a Prometheus Operator CRD) is
checked against the fields of its monitoring.coreos.com/v1 schema used
here. Then the references between the objects: selectors match the pods,
named ports exist, the ConfigMap and Secret the pods use exist with the
keys they name, the Kustomization lists every other file.
"""
import inspect
import os
import re
import sys

import yaml
import kubernetes.client as k8s

KINDS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def required(cls):
    """The attributes whose setter refuses None (the API's required fields)."""
    out = []
    for attr in cls.openapi_types:
        src = inspect.getsource(getattr(cls, attr).fset)
        if "must not be `None`" in src:
            out.append(attr)
    return out


def check_value(value, typ, where):
    if typ in ("object",):  # IntOrString and the like
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            problem(where, f"must be an int or a string, got {type(value).__name__}")
        return
    if typ == "str" or typ == "datetime":
        if not isinstance(value, str):
            problem(where, f"must be a string, got {type(value).__name__}")
        return
    if typ == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            problem(where, f"must be an integer, got {type(value).__name__}")
        return
    if typ == "bool":
        if not isinstance(value, bool):
            problem(where, f"must be a boolean, got {type(value).__name__}")
        return
    m = re.match(r"list\[(.*)\]$", typ)
    if m:
        if not isinstance(value, list):
            problem(where, f"must be a list, got {type(value).__name__}")
            return
        for i, v in enumerate(value):
            check_value(v, m.group(1), f"{where}[{i}]")
        return
    m = re.match(r"dict\(str, (.*)\)$", typ)
    if m:
        if not isinstance(value, dict):
            problem(where, f"must be a map, got {type(value).__name__}")
            return
        for key, v in value.items():
            check_value(v, m.group(1), f"{where}.{key}")
        return
    check_model(value, getattr(k8s, typ), where)


def check_model(value, cls, where):
    if not isinstance(value, dict):
        problem(where, f"must be an object ({cls.__name__}), got {type(value).__name__}")
        return
    by_json = {j: a for a, j in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in by_json:
            problem(where, f"unknown field '{key}' ({cls.__name__})")
            continue
        if v is None:
            continue
        check_value(v, cls.openapi_types[by_json[key]], f"{where}.{key}")
    for attr in required(cls):
        if value.get(cls.attribute_map[attr]) is None:
            problem(where, f"missing required field '{cls.attribute_map[attr]}' ({cls.__name__})")


# ServiceMonitor: monitoring.coreos.com/v1, the fields of its CRD's schema
# (prometheus-operator) that a ServiceMonitor of this size uses.
SM_ENDPOINT = {"port": "str", "targetPort": "object", "path": "str", "scheme": "str",
               "interval": "str", "scrapeTimeout": "str", "honorLabels": "bool",
               "honorTimestamps": "bool", "params": "dict(str, list[str])",
               "bearerTokenSecret": "V1SecretKeySelector", "authorization": "dict(str, object)",
               "relabelings": "list[dict(str, object)]", "metricRelabelings": "list[dict(str, object)]"}
SM_SPEC = {"selector": "V1LabelSelector", "endpoints": None, "jobLabel": "str",
           "targetLabels": "list[str]", "podTargetLabels": "list[str]",
           "namespaceSelector": None, "sampleLimit": "int"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")


def check_fields(value, fields, where, need=()):
    if not isinstance(value, dict):
        problem(where, "must be an object")
        return
    for key, v in value.items():
        if key not in fields:
            problem(where, f"unknown field '{key}'")
        elif fields[key] is not None:
            check_value(v, fields[key], f"{where}.{key}")
    for key in need:
        if key not in value:
            problem(where, f"missing required field '{key}'")


def check_servicemonitor(doc, where):
    check_fields(doc, {"apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta", "spec": None},
                 where, need=("metadata", "spec"))
    spec = doc.get("spec") or {}
    check_fields(spec, SM_SPEC, f"{where}.spec", need=("selector", "endpoints"))
    eps = spec.get("endpoints")
    if not isinstance(eps, list) or not eps:
        problem(f"{where}.spec.endpoints", "must be a non-empty list")
        eps = []
    for i, ep in enumerate(eps):
        check_fields(ep, SM_ENDPOINT, f"{where}.spec.endpoints[{i}]")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                problem(f"{where}.spec.endpoints[{i}].{key}", f"not a duration: {ep[key]}")
    ns = spec.get("namespaceSelector")
    if ns is not None:
        check_fields(ns, {"any": "bool", "matchNames": "list[str]"}, f"{where}.spec.namespaceSelector")


DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def matches(selector, labels):
    want = (selector or {}).get("matchLabels") or {}
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def main(paths):
    docs = []
    kustomizations = []
    for path in paths:
        with open(path) as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if doc is None:
                    continue
                where = f"{os.path.basename(path)}#{i}"
                if not isinstance(doc, dict):
                    problem(where, "not an object")
                    continue
                api, kind = doc.get("apiVersion"), doc.get("kind")
                if (api, kind) == ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
                    kustomizations.append((path, doc))
                    continue
                if (api, kind) == ("monitoring.coreos.com/v1", "ServiceMonitor"):
                    check_servicemonitor(doc, where)
                elif (api, kind) in KINDS:
                    check_model(doc, getattr(k8s, KINDS[(api, kind)]), where)
                else:
                    problem(where, f"unknown kind {kind} of apiVersion {api}")
                    continue
                name = (doc.get("metadata") or {}).get("name")
                if not isinstance(name, str) or not DNS1123.match(name) or len(name) > 63:
                    problem(where, f"metadata.name must be a DNS-1123 label, got {name!r}")
                docs.append((where, kind, doc))
    if problems:
        return
    objs = {}
    for where, kind, doc in docs:
        objs.setdefault(kind, []).append((where, doc))
    for where, dep in objs.get("Deployment", []):
        spec = dep["spec"]
        tmpl = spec["template"]
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        if not matches(spec["selector"], labels):
            problem(where, "spec.selector does not match the pod template's labels")
        pod = tmpl["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            cw = f"{where}.containers[{c['name']}]"
            ports = {p.get("name") for p in c.get("ports", [])}
            for p in c.get("ports", []):
                if p.get("name") and (len(p["name"]) > 15 or not DNS1123.match(p["name"])):
                    problem(cw, f"port name {p['name']!r} is not an IANA service name")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                pr = c.get(probe) or {}
                port = (pr.get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problem(cw, f"{probe} names port {port!r}, which the container has not")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problem(cw, f"volumeMount {m['name']!r} names no volume")
            for ref in c.get("envFrom", []):
                name = (ref.get("secretRef") or {}).get("name")
                if name and not any(d["metadata"]["name"] == name for _, d in objs.get("Secret", [])):
                    problem(cw, f"envFrom names Secret {name!r}, not among the manifests")
        for v in volumes.values():
            cm = v.get("configMap")
            if cm:
                found = [d for _, d in objs.get("ConfigMap", []) if d["metadata"]["name"] == cm["name"]]
                if not found:
                    problem(where, f"volume {v['name']!r} names ConfigMap {cm['name']!r}, not among the manifests")
                for item in cm.get("items", []):
                    if found and item["key"] not in (found[0].get("data") or {}):
                        problem(where, f"volume {v['name']!r} names key {item['key']!r}, not in the ConfigMap")
    pods = [d["spec"]["template"] for _, d in objs.get("Deployment", [])]
    for where, svc in objs.get("Service", []):
        sel = svc["spec"].get("selector") or {}
        selected = [p for p in pods if matches({"matchLabels": sel}, p["metadata"].get("labels") or {})]
        if not selected:
            problem(where, "spec.selector matches no pod template")
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            names = {cp.get("name") for t in selected for c in t["spec"]["containers"] for cp in c.get("ports", [])}
            if isinstance(tp, str) and tp not in names:
                problem(where, f"targetPort {tp!r} is no container port of the pods")
    for where, sm in objs.get("ServiceMonitor", []):
        svcs = [s for _, s in objs.get("Service", []) if matches(sm["spec"]["selector"], s["metadata"].get("labels") or {})]
        if not svcs:
            problem(where, "spec.selector matches no Service's labels")
        for ep in sm["spec"]["endpoints"]:
            if "port" in ep and not any(ep["port"] == p.get("name") for s in svcs for p in s["spec"]["ports"]):
                problem(where, f"endpoint port {ep['port']!r} is no port of the Service")
    for where, pdb in objs.get("PodDisruptionBudget", []):
        if not any(matches(pdb["spec"].get("selector"), p["metadata"].get("labels") or {}) for p in pods):
            problem(where, "spec.selector matches no pod template")
    for path, kz in kustomizations:
        listed = set(kz.get("resources") or [])
        here = {os.path.basename(p) for p in paths if os.path.dirname(p) == os.path.dirname(path)} - {os.path.basename(path)}
        if listed != here:
            problem(os.path.basename(path), f"resources {sorted(listed)} are not the files {sorted(here)}")


if __name__ == "__main__":
    main(sys.argv[1:])
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)
