#!/usr/bin/env python3
"""Packs a directory into a one-layer OCI image archive that
`ctr images import` loads, without a Docker engine or a registry.

    oci-archive.py ROOTFS OUT.tar NAME:TAG [--entrypoint ARG ...] [--env K=V ...] [--user UID:GID]

The layer is a tarball of ROOTFS with owners and modes as they are (run as
root so that files owned by root stay so) and mtimes clamped to 0, so the same
rootfs always gives the same image digest.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile


def layer_bytes(rootfs):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, os.path.relpath(path, rootfs))
                info.mtime = 0
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return raw.getvalue()


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    out.append((f"blobs/sha256/{digest}", data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rootfs")
    ap.add_argument("out")
    ap.add_argument("ref", help="image name and tag, e.g. pytier.dev/python:3.11")
    ap.add_argument("--entrypoint", nargs="*", default=[])
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--user", help="the user the image runs as, e.g. 65532:65532")
    args = ap.parse_args()

    layer = layer_bytes(args.rootfs)
    files = []
    layer_gz = gzip.compress(layer, compresslevel=1, mtime=0)
    layer_desc = blob(files, layer_gz)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": args.entrypoint or None, "Env": args.env or None, "User": args.user or None},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    config_desc = blob(files, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}],
    }
    manifest_desc = blob(files, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **manifest_desc,
            "annotations": {"io.containerd.image.name": args.ref, "org.opencontainers.image.ref.name": args.ref.rsplit(":", 1)[-1]},
        }],
    }
    files.append(("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()))
    files.append(("index.json", json.dumps(index, sort_keys=True).encode()))

    tmp = args.out + ".tmp"
    with tarfile.open(tmp, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
