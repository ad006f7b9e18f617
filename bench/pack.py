#!/usr/bin/env python3
"""The pack benchmark: N inputs merged into M outputs (default 200 into 20, 10 inputs each).

sops-enclave side: ``sops-enclave exec --enclave dev`` on a git repository whose inputs are
encrypted for a KMS key whose key policy allows Decrypt only with an attestation document
whose PCR0 is the dev enclave's (``dev_pcrs()[0]``), against the dev stack (moto's KMS server
behind the KMS-with-attestation layer, both on 127.0.0.1). Outputs are encrypted for a KMS key
(with an encryption context) and an age recipient; every output gets a receipt.

Baseline: a bash pipeline with the sops 3.11 binary, one output at a time::

    for each output:
        for each of its 10 inputs: sops decrypt --output-type json INPUT
        | jq -s 'reduce .[] as $x ({}; . * $x)'            # deep merge, later inputs win
        | sops encrypt --filename-override OUT.json --kms RUNTIME --age AGE \\
              --encryption-context service:SVC > OUT.json

The sops binary cannot produce an attestation document, so the gated key refuses it (that
is the point of the gate). The baseline therefore decrypts its own copy of the same
plaintext inputs, encrypted for a second KMS key with moto's default key policy (no
attestation condition), through the SAME attested KMS URL: both sides pay the same HTTP
hops (client -> attestation layer -> moto, plus the layer's GetKeyPolicy lookup) and both
are counted by ``stack.kms.stats``. The dev enclave additionally pays the RSA
CiphertextForRecipient wrapping that real KMS does for attested requests.

Every input is encrypted separately, so there are N distinct data keys: sops-enclave must
make exactly N Decrypt calls (one per distinct data key); the baseline makes one per
``sops decrypt`` (N here, since every input feeds one output; more if inputs were shared).

Run standalone: python bench/pack.py [--runs N] [--outputs M] [--per-output K]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import log, measure, tool  # noqa: E402

PCR0_KEY = "kms:RecipientAttestation:ImageSha384"

BASELINE_SH = r"""
# One output per line of $PACK_PLAN: "SVC OUT IN1 IN2 ... INk" (paths relative to $PACK_DIR).
set -euo pipefail
cd "$PACK_DIR"
pack_one() {
    local svc=$1 out=$2; shift 2
    for f in "$@"; do "$SOPS" decrypt --output-type json "$f" || exit 1; done \
      | jq -s 'reduce .[] as $x ({}; . * $x)' \
      | "$SOPS" encrypt --filename-override "$out" --kms "$RUNTIME_KMS" --age "$OUT_AGE" \
            --encryption-context "service:$svc" > "$out.tmp"
    mv "$out.tmp" "$out"
}
export -f pack_one
mkdir -p deploy
if [ "${PACK_PARALLEL:-1}" -gt 1 ]; then
    xargs -P "$PACK_PARALLEL" -L 1 bash -c 'set -euo pipefail; pack_one "$@"' _ < "$PACK_PLAN"
else
    while read -r line; do pack_one $line; done < "$PACK_PLAN"
fi
"""


def gated_policy(pcr0_hex: str) -> str:
    """Decrypt/GenerateDataKey only with an attestation document whose PCR0 is pcr0_hex."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy",
                    "kms:CreateAlias"], "Resource": "*"},
        {"Sid": "EnclaveOnly", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {PCR0_KEY: pcr0_hex}}},
        {"Sid": "DenyWithoutAttestation", "Effect": "Deny", "Principal": {"AWS": "*"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"Null": {PCR0_KEY: "true"}}},
    ]})


def input_doc(svc: int, j: int, values: int = 16) -> bytes:
    """One input: a shared section (later inputs override earlier ones) and its own one."""
    lines = ["shared:\n", f"    log_level: level-{j}\n", f"    timeout: {10 + j}\n",
             "    db:\n", f"        host: db-{svc}.internal\n",
             f"        password: pw-{svc}-{j}\n", f"part_{j:02d}:\n"]
    for k in range(values):
        lines.append(f"    key_{k:02d}: secret-{svc}-{j}-{k}-" + "x" * ((svc + j + k) % 17) + "\n")
    return "".join(lines).encode()


def _git(repo: Path, *args: str) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(repo))
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


class PackBench:
    """Sets up the dev stack, the two repositories and the baseline script; ``run()``
    measures. Use as a context manager (the dev stack is stopped on exit)."""

    def __init__(self, outputs: int = 20, per_output: int = 10, parallel: int = 0, *,
                 values: int = 16, baseline: bool = True, small_outputs: int = 0):
        """``values``: keys in each input's own section (16; the big-inputs row uses
        16,000). ``baseline=False``: no baseline copy (sops-enclave only). ``small_outputs``:
        also a second repository holding only the first ``small_outputs`` outputs' inputs
        (the growth row: the same pack at a tenth of the size, same dev stack)."""
        self.outputs, self.per_output, self.parallel = outputs, per_output, parallel
        self.values, self.baseline, self.small_outputs = values, baseline, small_outputs
        self.work = Path(tempfile.mkdtemp(prefix="sops-enclave-bench-pack-"))
        self.stack = None
        #: Times the gated key's policy was re-pinned because the dev PCR0 changed (the code
        #: it measures was edited while the bench ran).
        self.repins = 0

    def __enter__(self) -> "PackBench":
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.stack is not None:
            self.stack.stop()
            self.stack = None
        shutil.rmtree(self.work, ignore_errors=True)

    def _setup(self) -> None:
        import boto3
        import pyrage

        work = self.work
        ca = work / "dev-ca"
        ca.mkdir()
        os.environ["SOPS_ENCLAVE_DEV_CA_DIR"] = str(ca)
        from sops_enclave.devtools.devstack import DevStack, dev_pcrs

        self.sops, self.ours = tool("sops"), tool("sops-enclave")
        if not shutil.which("jq"):
            sys.exit("bench: jq not found (the baseline pipeline merges with jq)")
        self.stack = DevStack(ca_dir=str(ca)).start()
        self.pcr0 = dev_pcrs()[0].hex()
        kms = boto3.client("kms", region_name="us-east-1", endpoint_url=self.stack.url,
                           aws_access_key_id="dev", aws_secret_access_key="dev")
        self.kms_client = kms
        self.gated = kms.create_key(Description="bench inputs, dev enclave only")["KeyMetadata"]["Arn"]
        kms.put_key_policy(KeyId=self.gated, PolicyName="default",
                           Policy=gated_policy(self.pcr0))
        self.open = kms.create_key(Description="bench baseline inputs, no attestation "
                                               "condition")["KeyMetadata"]["Arn"]
        self.runtime = kms.create_key(Description="bench outputs")["KeyMetadata"]["Arn"]
        ident = pyrage.x25519.Identity.generate()
        self.age_identity, self.age_recipient = str(ident), str(ident.to_public())
        (work / "home").mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SOPS_", "AWS_", "GNUPG"))}
        env.update(HOME=str(work / "home"), XDG_CONFIG_HOME=str(work / "home" / ".config"),
                   SOPS_AGE_KEY=self.age_identity, SOPS_DISABLE_VERSION_CHECK="1", TZ="UTC",
                   SOPS_ENCLAVE_DEV_CA_DIR=str(ca), **self.stack.env())
        self.env = env

        # The same plaintext inputs, encrypted twice: for the gated key (the enclave's repo)
        # and for the open key (the baseline's copy). Encrypted with the sops binary through
        # the attested KMS URL (Encrypt is not gated).
        self.repo, self.base = work / "repo", work / "baseline"
        plain = work / "plain"
        jobs, plan_lines = [], []
        for s in range(self.outputs):
            svc = f"s{s:02d}"
            ins = []
            for j in range(self.per_output):
                rel = f"secrets/{svc}/in{j:02d}.enc.yaml"
                src = plain / svc / f"in{j:02d}.yaml"
                src.parent.mkdir(parents=True, exist_ok=True)
                src.write_bytes(input_doc(s, j, self.values))
                for root, key in ((self.repo, self.gated), (self.base, self.open))[
                        :2 if self.baseline else 1]:
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    jobs.append([self.sops, "encrypt", "--kms", key, "--output",
                                 str(root / rel), str(src)])
                ins.append(rel)
            plan_lines.append(" ".join([svc, f"deploy/{svc}.enc.json", *ins]))

        def enc(cmd):
            p = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
            if p.returncode:
                raise SystemExit(f"bench: {' '.join(cmd)}: {p.stderr.decode()[-500:]}")

        log(f"  pack: encrypting {len(jobs)} input files "
            f"({self.outputs * self.per_output} for each side)" if self.baseline else
            f"  pack: encrypting {len(jobs)} input files (sops-enclave side only)")
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(enc, jobs))
        shutil.rmtree(plain)
        inputs = "\n".join(f'      - "secrets/{{svc}}/in{j:02d}.enc.yaml"'
                           for j in range(self.per_output))
        self.repo_small = None
        if self.small_outputs:
            self.repo_small = work / "repo-small"
            for s in range(self.small_outputs):
                shutil.copytree(self.repo / f"secrets/s{s:02d}",
                                self.repo_small / f"secrets/s{s:02d}")
        for repo, n in ((self.repo, self.outputs), (self.repo_small, self.small_outputs)):
            if repo is not None:
                self._write_config(repo, n, inputs)
        (work / "plan.txt").write_text("\n".join(plan_lines) + "\n")
        (work / "baseline.sh").write_text(BASELINE_SH)
        self.base_env = dict(env, SOPS=self.sops, PACK_DIR=str(self.base),
                             PACK_PLAN=str(work / "plan.txt"), RUNTIME_KMS=self.runtime,
                             OUT_AGE=self.age_recipient)
        self.ours_cmd = [self.ours, "exec", "--enclave", "dev", "--json", "--repo",
                         str(self.repo)]
        self.base_cmd = ["bash", str(work / "baseline.sh")]

    def _write_config(self, repo: Path, outputs: int, inputs: str) -> None:
        svcs = ", ".join(f"s{s:02d}" for s in range(outputs))
        (repo / ".sops-enclave.yaml").write_text(f"""version: 1
matrix: {{svc: [{svcs}]}}
outputs:
  - target: "{{svc}}"
    path: "deploy/{{svc}}.enc.json"
    inputs:
{inputs}
    encrypt:
      kms: ["{self.runtime}"]
      encryption_context: {{service: "{{svc}}"}}
      age: ["{self.age_recipient}"]
""")
        _git(repo, "init", "-q")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "bench inputs")

    # ------------------------------------------------------------------ measuring

    def _kms_cpu(self) -> float:
        """CPU seconds used so far by the dev KMS stack: this process (the attestation layer
        runs in a thread here; the main thread only waits) plus the moto_server process."""
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ru.ru_utime + ru.ru_stime
        try:
            fields = Path(f"/proc/{self.stack.moto.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError, AttributeError):
            pass
        return cpu

    def _one(self, which: str, parallel: int = 1, rss: bool = False) -> tuple[float, int, dict]:
        """One run of one side: (seconds, peak RSS KiB, KMS requests per operation and
        ``kms_cpu_s``, the CPU time the dev KMS stack spent during the run)."""
        before = self.stack.kms.stats
        cpu0 = self._kms_cpu()
        if which == "enclave":
            self._pin()
            try:
                dt, peak, out = measure(self.ours_cmd, self.env, rss=rss)
            except SystemExit as e:
                # The code (hence PCR0) may have changed between _pin() and the enclave's
                # start: re-pin and retry once; anything else is a real failure.
                if "AccessDenied" not in str(e) or not self._pin():
                    raise
                before = self.stack.kms.stats
                cpu0 = self._kms_cpu()
                dt, peak, out = measure(self.ours_cmd, self.env, rss=rss)
            summary = json.loads(out)
            if len(summary["outputs"]) != self.outputs:
                raise SystemExit(f"bench: exec wrote {len(summary['outputs'])} outputs")
        else:
            dt, peak, _ = measure(self.base_cmd, dict(self.base_env, PACK_PARALLEL=str(parallel)),
                                  rss=rss)
        after = self.stack.kms.stats
        calls = {k: after.get(k, 0) - before.get(k, 0) for k in after
                 if after.get(k, 0) != before.get(k, 0)}
        calls["kms_cpu_s"] = self._kms_cpu() - cpu0
        return dt, peak, calls

    def _pin(self) -> bool:
        """Point the gated key's policy at the current dev PCR0 (outside the timed part).
        True when it had changed."""
        from sops_enclave.devtools.devstack import dev_pcrs

        pcr0 = dev_pcrs()[0].hex()
        if pcr0 == self.pcr0:
            return False
        self.kms_client.put_key_policy(KeyId=self.gated, PolicyName="default",
                                       Policy=gated_policy(pcr0))
        self.pcr0 = pcr0
        self.repins += 1
        log(f"  pack: the dev PCR0 changed (code edited during the run); key policy re-pinned "
            f"to {pcr0[:16]}...")
        return True

    def _ours(self, repo: Path, outputs: int, rss: bool = False) -> tuple[float, int, dict]:
        """One sops-enclave run on ``repo`` (``outputs`` outputs): seconds, peak KiB, calls."""
        cmd = [self.ours, "exec", "--enclave", "dev", "--json", "--repo", str(repo)]
        before = self.stack.kms.stats
        self._pin()
        try:
            dt, peak, out = measure(cmd, self.env, rss=rss)
        except SystemExit as e:
            if "AccessDenied" not in str(e) or not self._pin():
                raise
            before = self.stack.kms.stats
            dt, peak, out = measure(cmd, self.env, rss=rss)
        if len(json.loads(out)["outputs"]) != outputs:
            raise SystemExit(f"bench: exec on {repo.name} did not write {outputs} outputs")
        after = self.stack.kms.stats
        return dt, peak, {k: after.get(k, 0) - before.get(k, 0) for k in after}

    def run_growth(self, runs: int) -> dict:
        """sops-enclave only: the small repository (``small_outputs`` outputs) against the
        full one, alternated run by run; peak memory from one untimed run of each."""
        small, big = (self.repo_small, self.small_outputs), (self.repo, self.outputs)
        peaks = {n: self._ours(r, n, rss=True)[1] for r, n in (small, big)}
        times: dict[int, list[float]] = {small[1]: [], big[1]: []}
        dec: dict[int, set] = {small[1]: set(), big[1]: set()}
        for i in range(runs):
            for r, n in ((small, big) if i % 2 == 0 else (big, small)):
                dt, _, c = self._ours(r, n)
                times[n].append(dt)
                dec[n].add(c.get("Decrypt", 0))
            log(f"  pack growth run {i + 1}/{runs}: {small[1]} outputs "
                f"{times[small[1]][-1]:.2f}s, {big[1]} outputs {times[big[1]][-1]:.2f}s")
        s_s, s_b = statistics.median(times[small[1]]), statistics.median(times[big[1]])
        return {"runs": runs, "per_output": self.per_output,
                "small": {"outputs": small[1], "inputs": small[1] * self.per_output,
                          "s": s_s, "times": times[small[1]], "rss_mib": peaks[small[1]] / 1024,
                          "decrypt_calls": sorted(dec[small[1]])},
                "big": {"outputs": big[1], "inputs": big[1] * self.per_output,
                        "s": s_b, "times": times[big[1]], "rss_mib": peaks[big[1]] / 1024,
                        "decrypt_calls": sorted(dec[big[1]])},
                "work_factor": big[1] / small[1], "time_factor": s_b / s_s,
                "rss_factor": peaks[big[1]] / peaks[small[1]] if peaks[small[1]] else 0.0,
                "pcr0_repins": self.repins}

    def check_outputs(self) -> bool:
        """Decrypt every output of both sides with the sops binary (age key); same content?"""
        env = {k: v for k, v in self.env.items() if not k.startswith("AWS_")}  # age only
        for s in range(self.outputs):
            docs = []
            for root in (self.repo, self.base):
                p = subprocess.run([self.sops, "decrypt", str(root / f"deploy/s{s:02d}.enc.json")],
                                   env=env, capture_output=True, timeout=60)
                if p.returncode:
                    raise SystemExit(f"bench: pack output s{s:02d}: {p.stderr.decode()[-300:]}")
                docs.append(json.loads(p.stdout))
            if docs[0] != docs[1]:
                return False
        return True

    def run(self, runs: int, parallel: int = 0) -> dict:
        """Alternate the two sides ``runs`` times. With ``parallel`` > 1, also time the
        baseline pipeline run ``parallel`` outputs at a time (xargs -P)."""
        times: dict[str, list[float]] = {"enclave": [], "sops": [], "sops_par": []}
        peaks = {"enclave": 0, "sops": 0, "sops_par": 0}
        calls: dict[str, list[dict]] = {"enclave": [], "sops": [], "sops_par": []}
        sides = ["enclave", "sops"] + (["sops_par"] if parallel > 1 else [])
        # One untimed run of each side under GNU time: peak memory, and a warm-up.
        for side in sides:
            _, peaks[side], _ = self._one("enclave" if side == "enclave" else "sops",
                                         parallel if side == "sops_par" else 1, rss=True)
        for i in range(runs):
            order = sides if i % 2 == 0 else list(reversed(sides))
            for side in order:
                dt, _, c = self._one("enclave" if side == "enclave" else "sops",
                                     parallel if side == "sops_par" else 1)
                times[side].append(dt)
                calls[side].append(c)
            log(f"  pack run {i + 1}/{runs}: " + ", ".join(
                f"{s} {times[s][-1]:.2f}s" for s in sides))
        n_inputs = self.outputs * self.per_output
        res = {"inputs": n_inputs, "outputs": self.outputs, "per_output": self.per_output,
               "runs": runs, "parallel": parallel, "identical_output": self.check_outputs(),
               "pcr0_repins": self.repins}
        for s in sides:
            dec = sorted({c.get("Decrypt", 0) for c in calls[s]})
            res[s] = {"s": statistics.median(times[s]), "times": times[s],
                      "rss_mib": peaks[s] / 1024, "decrypt_calls": dec,
                      "kms_cpu_s": statistics.median(c["kms_cpu_s"] for c in calls[s]),
                      "kms_calls": calls[s][-1]}
        res["ratio"] = res["enclave"]["s"] / res["sops"]["s"]
        if "sops_par" in res:
            res["ratio_par"] = res["enclave"]["s"] / res["sops_par"]["s"]
        res["one_decrypt_per_data_key"] = res["enclave"]["decrypt_calls"] == [n_inputs]
        return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--outputs", type=int, default=20)
    ap.add_argument("--per-output", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=0,
                    help="also time the baseline with xargs -P N")
    args = ap.parse_args()
    with PackBench(args.outputs, args.per_output) as pb:
        res = pb.run(args.runs, args.parallel)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
