#!/usr/bin/env bash
# Build the sops-enclave enclave image file (EIF) and record its measurements.
#
#   enclave/build.sh --region eu-west-1 [--region us-east-1 ...] [options]
#
# Steps (all outputs in build/ at the repository root):
#   1. the bundle: build/sops-enclave-bundle.tar (normalised archive of the sops_enclave
#      sources + enclave/ + requirements.lock) and build/bundle.json (its sha256 and dev PCRs);
#   2. a Docker image from enclave/Dockerfile, with a build context that holds only the bundle
#      (the Dockerfile used is the one inside the bundle), SOURCE_DATE_EPOCH and KMS_REGIONS;
#   3. nitro-cli build-enclave -> build/sops-enclave.eif;
#   4. nitro-cli describe-eif -> build/pcrs.json: PCR0/1/2 plus everything needed to rebuild
#      them (bundle sha256, base image, regions, SOURCE_DATE_EPOCH, nitro-cli and docker
#      versions). Feed PCR0 (and PCR1/PCR2) to `sops-enclave policy`.
#
# Options:
#   --enclave-policy FILE the enclave policy (required): which commit signers, output
#                         recipients and input KMS keys the enclave accepts. Measured into
#                         the image (it changes PCR0), see docs/enclave-policy.md.
#   --region R            KMS region the enclave may reach (repeatable, or comma-separated;
#                         default: $SOPS_ENCLAVE_KMS_REGIONS). Part of the measurement.
#   --source-date-epoch N mtime for everything the build writes (default: $SOURCE_DATE_EPOCH,
#                         else 0). Part of the measurement.
#   --tag NAME            Docker image name (default: sops-enclave:<bundle sha256 prefix>)
#   --out DIR             output directory (default: <repo>/build)
#   --no-cache            build the Docker image without the layer cache
#   --check-reproducible  build twice (the second time with --no-cache, at another time)
#                         and fail unless PCR0, PCR1 and PCR2 are equal
#
# Needs: docker (running, and usable by this user), nitro-cli (aws-nitro-enclaves-cli, with
# its -devel package for the build blobs), and a Python with sops-enclave's dependencies
# (cbor2, cryptography) for the bundle builder: $PYTHON, else <repo>/.venv/bin/python,
# else python3. Without nitro-cli the script stops before doing anything; the bundle and its
# dev measurement alone come from `make reproduce` or `python enclave/bundle.py`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/build"
REGIONS="${SOPS_ENCLAVE_KMS_REGIONS:-}"
SDE="${SOURCE_DATE_EPOCH:-0}"
TAG=""
NO_CACHE=""
CHECK=0
EXPLICIT_REGIONS=""
POLICY=""

die() { echo "build.sh: $1" >&2; exit "${2:-1}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --region) [ $# -ge 2 ] || die "--region needs a value" 2
                  EXPLICIT_REGIONS="${EXPLICIT_REGIONS:+$EXPLICIT_REGIONS,}$2"; shift 2 ;;
        --region=*) EXPLICIT_REGIONS="${EXPLICIT_REGIONS:+$EXPLICIT_REGIONS,}${1#*=}"; shift ;;
        --source-date-epoch) [ $# -ge 2 ] || die "--source-date-epoch needs a value" 2
                  SDE="$2"; shift 2 ;;
        --enclave-policy) [ $# -ge 2 ] || die "--enclave-policy needs a file" 2
                  POLICY="$2"; shift 2 ;;
        --enclave-policy=*) POLICY="${1#*=}"; shift ;;
        --tag) [ $# -ge 2 ] || die "--tag needs a value" 2; TAG="$2"; shift 2 ;;
        --out) [ $# -ge 2 ] || die "--out needs a value" 2; OUT="$2"; shift 2 ;;
        --no-cache) NO_CACHE="--no-cache"; shift ;;
        --check-reproducible) CHECK=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" 2 ;;
    esac
done
[ -n "$EXPLICIT_REGIONS" ] && REGIONS="$EXPLICIT_REGIONS"
[ -n "$POLICY" ] || die "--enclave-policy FILE is required: a Nitro image cannot be built without an enclave policy (see docs/enclave-policy.md). Nothing was built." 2
[ -f "$POLICY" ] || die "--enclave-policy $POLICY: no such file" 2
POLICY="$(cd "$(dirname "$POLICY")" && pwd)/$(basename "$POLICY")"
REGIONS="$(printf '%s' "$REGIONS" | tr -d ' ')"
[ -n "$REGIONS" ] || die "no KMS region: pass --region REGION (e.g. --region eu-west-1) or set SOPS_ENCLAVE_KMS_REGIONS; the region is part of the measurement" 2
case "$SDE" in ''|*[!0-9]*) die "SOURCE_DATE_EPOCH must be a non-negative integer, not '$SDE'" 2 ;; esac

# --- tools -----------------------------------------------------------------------------------
command -v nitro-cli >/dev/null 2>&1 || die "nitro-cli not found. It only exists on an EC2 instance with the AWS Nitro Enclaves CLI installed (Amazon Linux 2023: sudo dnf install -y aws-nitro-enclaves-cli aws-nitro-enclaves-cli-devel; see docs/deploy-nitro.md). Nothing was built. To compute the bundle and its dev measurement without nitro-cli, run 'make reproduce'." 127
command -v docker >/dev/null 2>&1 || die "docker not found (Amazon Linux 2023: sudo dnf install -y docker && sudo systemctl enable --now docker)" 127
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon: is it running, and is $(id -un) in the docker group (sudo usermod -aG docker $(id -un), then log in again)?"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3 || true)"; fi
[ -n "$PY" ] || die "no Python found for the bundle builder (set PYTHON)" 127

mkdir -p "$OUT"
export SOURCE_DATE_EPOCH="$SDE"

# --- 1. the bundle ---------------------------------------------------------------------------
# Run the checkout's own bundle.py against the checkout's own sources.
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$ROOT/enclave/bundle.py" \
    --root "$ROOT" --output "$OUT/sops-enclave-bundle.tar" --enclave-policy "$POLICY" \
    --json > "$OUT/bundle.json"
BUNDLE_SHA="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$OUT/bundle.json")"
echo "bundle sha256 $BUNDLE_SHA"
[ -n "$TAG" ] || TAG="sops-enclave:${BUNDLE_SHA:0:16}"

CTX="$(mktemp -d "${TMPDIR:-/tmp}/sops-enclave-ctx.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
cp "$OUT/sops-enclave-bundle.tar" "$CTX/sops-enclave-bundle.tar"
tar -xOf "$OUT/sops-enclave-bundle.tar" sops_enclave/enclave/Dockerfile > "$CTX/Dockerfile"
touch -d "@$SDE" "$CTX/sops-enclave-bundle.tar" "$CTX/Dockerfile"
BASE_IMAGE="$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$CTX/Dockerfile" | head -n1)"

build_once() {  # $1: image tag, $2: extra docker build flag; writes $OUT/<name>.eif + json
    local tag="$1" extra="$2" name="$3"
    echo "docker build $tag (regions $REGIONS, SOURCE_DATE_EPOCH $SDE)"
    # shellcheck disable=SC2086
    docker build $extra --pull=false \
        --build-arg "SOURCE_DATE_EPOCH=$SDE" --build-arg "KMS_REGIONS=$REGIONS" \
        -t "$tag" -f "$CTX/Dockerfile" "$CTX"
    echo "nitro-cli build-enclave -> $OUT/$name.eif"
    nitro-cli build-enclave --docker-uri "$tag" --output-file "$OUT/$name.eif" \
        > "$OUT/$name.build.json"
    if ! nitro-cli describe-eif --eif-path "$OUT/$name.eif" > "$OUT/$name.describe.json" 2>/dev/null; then
        echo "build.sh: nitro-cli describe-eif failed (older nitro-cli?); using build-enclave's output" >&2
        cp "$OUT/$name.build.json" "$OUT/$name.describe.json"
    fi
}

write_pcrs() {  # $1: describe json, $2: eif, $3: output json
    "$PY" - "$1" "$2" "$3" "$OUT/bundle.json" "$REGIONS" "$SDE" "$BASE_IMAGE" "$TAG" \
        "$(nitro-cli --version 2>&1 | head -n1)" \
        "$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown)" \
        "$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || echo unknown)" <<'PY'
import hashlib, json, sys
(describe, eif, out, bundle, regions, sde, base, tag, nitro, docker, image_id) = sys.argv[1:12]
d = json.load(open(describe))
m = d.get("Measurements") or {}
pcrs = {k: m[k].lower() for k in ("PCR0", "PCR1", "PCR2", "PCR8") if k in m}
if not all(k in pcrs for k in ("PCR0", "PCR1", "PCR2")):
    sys.exit("build.sh: no PCR0/PCR1/PCR2 in the nitro-cli output: %s" % describe)
h = hashlib.sha256()
with open(eif, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
b = json.load(open(bundle))
doc = dict(pcrs)
doc.update({
    "HashAlgorithm": m.get("HashAlgorithm", "Sha384"),
    "eif": eif,
    "eif_sha256": h.hexdigest(),   # differs between builds (metadata build time); PCRs do not
    "bundle_sha256": b["sha256"],
    "bundle_dev_pcrs": b["dev_pcrs"],
    "kms_regions": regions.split(","),
    "source_date_epoch": int(sde),
    "base_image": base,
    "docker_image": tag,
    "docker_image_id": image_id,
    "docker_server_version": docker,
    "nitro_cli_version": nitro,
})
with open(out, "w") as f:
    json.dump(doc, f, indent=2, sort_keys=True)
    f.write("\n")
print("PCR0 %s\nPCR1 %s\nPCR2 %s" % (pcrs["PCR0"], pcrs["PCR1"], pcrs["PCR2"]))
PY
}

# --- 2-4. image, EIF, measurements -----------------------------------------------------------
build_once "$TAG" "$NO_CACHE" sops-enclave
write_pcrs "$OUT/sops-enclave.describe.json" "$OUT/sops-enclave.eif" "$OUT/pcrs.json"
echo "wrote $OUT/sops-enclave.eif and $OUT/pcrs.json"

if [ "$CHECK" = 1 ]; then
    echo "reproducibility check: second build with --no-cache"
    sleep 2   # a different wall-clock second, so unclamped mtimes would show
    build_once "$TAG-check" "--no-cache" sops-enclave-check
    TAG="$TAG-check" write_pcrs "$OUT/sops-enclave-check.describe.json" \
        "$OUT/sops-enclave-check.eif" "$OUT/pcrs-check.json" >/dev/null
    if "$PY" - "$OUT/pcrs.json" "$OUT/pcrs-check.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
bad = [k for k in ("PCR0", "PCR1", "PCR2") if a[k] != b[k]]
for k in ("PCR0", "PCR1", "PCR2"):
    print("%s %s %s" % (k, "same" if k not in bad else "DIFFERS", a[k]))
sys.exit(1 if bad else 0)
PY
    then
        echo "reproducible: two builds gave the same PCR0, PCR1 and PCR2"
    else
        die "NOT reproducible: the two builds differ (compare build/pcrs.json and build/pcrs-check.json; diff the images with 'docker save')"
    fi
fi
