#!/usr/bin/env python3
"""Media recovery for the media role: copy the media bucket into its backup bucket, and bring
a deleted or overwritten object back.

    media_s3.py sync    --source BUCKET --target BUCKET
    media_s3.py restore --bucket BUCKET --key KEY [--version-id ID | --from-bucket BACKUP]

Credentials come from the environment as boto3 reads them (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_CA_BUNDLE), never from the command line, where `ps` shows them.
Prints one JSON object: {"changed": bool, ...}; exits 1 with {"error": ...} on failure.

restore, by default, undoes the last thing that happened to KEY in a versioned bucket:
- the newest entry is a delete marker (the object was deleted): the markers on top are
  removed, and the newest real version is current again (no copy, no new version);
- the object was overwritten: the version before the current one is copied over the key
  (a new version: the overwrite stays in the history, nothing is lost).
--version-id names the version to bring back instead; --from-bucket copies the key back from
the backup bucket (for a bucket that lost its history, or an object older than the
noncurrent-version lifetime).
"""

import argparse
import json
import sys


def plan_restore(versions, markers, version_id=None):
    """What restoring a key takes, from its list_object_versions entries (Versions and
    DeleteMarkers filtered to that key). Returns ("remove-markers", [marker ids]),
    ("copy-version", version id) or ("nothing", reason). Pure: unit-tested on recorded data."""
    entries = [dict(v, _marker=False) for v in versions] + [dict(m, _marker=True) for m in markers]
    if not entries:
        return ("nothing", "the key has no versions")
    # Newest first; the current entry (IsLatest) wins a tie in LastModified (same second).
    entries.sort(key=lambda e: (e["LastModified"], bool(e.get("IsLatest"))), reverse=True)
    if version_id:
        if not any(v["VersionId"] == version_id for v in versions):
            return ("nothing", f"no version {version_id} of the key (a delete marker cannot be restored)")
        if not entries[0]["_marker"] and entries[0]["VersionId"] == version_id:
            return ("nothing", "that version is already current")
        return ("copy-version", version_id)
    if entries[0]["_marker"]:
        on_top = []
        for entry in entries:
            if not entry["_marker"]:
                return ("remove-markers", [m["VersionId"] for m in on_top])
            on_top.append(entry)
        return ("nothing", "the key has only delete markers: restore it --from-bucket the backup")
    older = [e for e in entries[1:] if not e["_marker"]]
    if not older:
        return ("nothing", "the key has a single version: nothing older to restore")
    return ("copy-version", older[0]["VersionId"])


def key_versions(client, bucket, key):
    versions, markers = [], []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        versions += [v for v in page.get("Versions", []) if v["Key"] == key]
        markers += [m for m in page.get("DeleteMarkers", []) if m["Key"] == key]
    return versions, markers


def restore(client, bucket, key, version_id=None, from_bucket=None):
    if from_bucket:
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": from_bucket, "Key": key})
        return {"changed": True, "key": key, "restored_from": f"s3://{from_bucket}/{key}"}
    action, detail = plan_restore(*key_versions(client, bucket, key), version_id=version_id)
    if action == "nothing":
        if version_id:
            raise ValueError(detail)
        return {"changed": False, "key": key, "reason": detail}
    if action == "remove-markers":
        for marker in detail:
            client.delete_object(Bucket=bucket, Key=key, VersionId=marker)
        return {"changed": True, "key": key, "removed_delete_markers": detail}
    client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key, "VersionId": detail})
    return {"changed": True, "key": key, "restored_version": detail}


def sync(client, source, target):
    """Copy every current object of source that target lacks or holds in another content
    (by ETag). Objects deleted from source stay in target: it is the copy to restore from."""
    present = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=target):
        present.update({o["Key"]: o["ETag"] for o in page.get("Contents", [])})
    copied = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=source):
        for obj in page.get("Contents", []):
            if present.get(obj["Key"]) != obj["ETag"]:
                client.copy_object(Bucket=target, Key=obj["Key"], CopySource={"Bucket": source, "Key": obj["Key"]})
                copied.append(obj["Key"])
    return {"changed": bool(copied), "copied": len(copied), "keys": copied[:100]}


def client_for(args):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=args.endpoint_url or None, region_name=args.region, verify=False if args.no_verify else None,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path" if args.path_style else "auto"}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint-url", default="")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--path-style", action="store_true")
    parser.add_argument("--no-verify", action="store_true", help="do not verify the endpoint's TLS certificate")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync")
    s.add_argument("--source", required=True)
    s.add_argument("--target", required=True)
    r = sub.add_parser("restore")
    r.add_argument("--bucket", required=True)
    r.add_argument("--key", required=True)
    how = r.add_mutually_exclusive_group()
    how.add_argument("--version-id", default="")
    how.add_argument("--from-bucket", default="")
    args = parser.parse_args(argv)
    try:
        client = client_for(args)
        if args.command == "sync":
            result = sync(client, args.source, args.target)
        else:
            result = restore(client, args.bucket, args.key, args.version_id or None, args.from_bucket or None)
    except Exception as exc:  # one JSON line for Ansible, whatever failed
        print(json.dumps({"changed": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
