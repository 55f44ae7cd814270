"""Write the v1 OpenAPI schemas of KubeRay's RayCluster and RayJob CRDs beside this file.

The suite validates `cluster/kuberay/*.yaml` against them. The CRDs themselves are
2.3 MB of YAML and sit outside the repository (`../shared/data/kuberay-crds` in the
development checkout), so a clean checkout, CI's, carries only what the test reads:
each CRD's `ray.io/v1` schema as sorted, compact JSON, gzipped (9-13 kB).

    python tests/data/kuberay-crds/vendor.py PATH/TO/kuberay/ray-operator/config/crd/bases

Re-run it when KubeRay's CRDs move on, and update the commit in README.md.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KINDS = ("RayCluster", "RayJob")


def crd_file(crd_dir: Path, kind: str) -> Path:
    return crd_dir / f"ray.io_{kind.lower()}s.yaml"


def vendored_file(kind: str) -> Path:
    return HERE / f"{kind.lower()}.v1.schema.json.gz"


def v1_schema(crd_yaml: Path) -> dict:
    """The `openAPIV3Schema` of the CRD's `v1` version, as the API server applies it."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 0.4 s against 2.4 s
    crd = yaml.load(crd_yaml.read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def load_vendored(kind: str) -> dict:
    return json.loads(gzip.decompress(vendored_file(kind).read_bytes()))


def main(crd_dir: Path) -> None:
    for kind in KINDS:
        text = json.dumps(v1_schema(crd_file(crd_dir, kind)), sort_keys=True, separators=(",", ":"))
        # mtime=0: the same schema gives the same bytes, so git sees no change.
        with gzip.GzipFile(vendored_file(kind), "wb", mtime=0) as out:
            out.write(text.encode())
        print(f"{vendored_file(kind).name}: {len(text)} bytes of JSON")


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: vendor.py CRD_DIR (the folder holding ray.io_rayclusters.yaml and ray.io_rayjobs.yaml)")
    main(Path(sys.argv[1]))
