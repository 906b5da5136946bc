"""Encryption throughput and memory: `sealtune encrypt/decrypt` against raw AES-GCM.

Measures, on the same 1 MiB segment size:
  * raw in-process `cryptography` AESGCM encrypt/decrypt (no I/O): the ceiling;
  * `openssl speed -evp aes-256-gcm -bytes 1048576`: the native ceiling;
  * the library in process (EncryptedWriter / open_encrypted, memory <-> file);
  * the `sealtune` CLI file to file, each run in a child process (includes start-up, reads,
    writes, fsync and the atomic rename);
  * peak RSS of `sealtune decrypt KEY FILE -` for a small and a large file (must not grow).
Prints a table with MB/s (wall clock and child CPU time) and the ratios to raw in-process.
A plain file copy (1 MiB reads/writes + fsync) of the same file is the I/O ceiling; run with
`--dir /dev/shm` to take the disk out (the trainer keeps plaintext on memory-backed volumes).

    python benchmarks/crypto_throughput.py [--size-mib 1024] [--small-mib 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _d in ("api", "trainer-image", "devkit"):
    sys.path.insert(0, str(ROOT / _d))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from sealtune_trainer import crypto  # noqa: E402

SEG = crypto.DEFAULT_SEGMENT_SIZE
MIB = 1 << 20
SEALTUNE = shutil.which("sealtune", path=str(Path(sys.executable).parent)) or "sealtune"

# Runs a command in a grandchild and reports its peak RSS and CPU seconds (RUSAGE_CHILDREN of
# a fresh wrapper covers exactly one command).
_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
    "wall = time.perf_counter() - t\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps({'wall': wall, 'user': u.ru_utime, 'sys': u.ru_stime,"
    " 'rss_kib': u.ru_maxrss}))\n"
)


def measured(cmd: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout)
    return result


def raw_aesgcm(total: int, repeat: int = 3) -> dict[str, float]:
    """In-process AESGCM over 1 MiB segments, best of `repeat` (wall and CPU)."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    seg = os.urandom(SEG)
    aad = b"\0" * crypto.AUTH_HEADER_SIZE
    n = total // SEG
    nonces = [i.to_bytes(12, "big") for i in range(n)]
    best: dict[str, float] = {}
    ct = aead.encrypt(nonces[0], seg, aad)
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        for nonce in nonces:
            aead.encrypt(nonce, seg, aad)
        enc_wall, enc_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        for _i in range(n):
            aead.decrypt(nonces[0], ct, aad)
        dec_wall, dec_cpu = time.perf_counter() - t, time.process_time() - c
        for k, v in (("enc_wall", enc_wall), ("enc_cpu", enc_cpu), ("dec_wall", dec_wall),
                     ("dec_cpu", dec_cpu)):  # fmt: skip
            best[k] = min(best.get(k, v), v)
    return {k: n * SEG / v / 1e6 for k, v in best.items()}


def openssl_speed() -> float | None:
    """AES-256-GCM MB/s from `openssl speed` on 1 MiB blocks, or None if unavailable."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "speed", "-evp", "aes-256-gcm", "-seconds", "2", "-bytes", str(SEG)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    m = re.search(r"^aes-256-gcm\s+([\d.]+)k\s*$", out.stdout, re.MULTILINE | re.IGNORECASE)
    return float(m.group(1)) * 1000 / 1e6 if m else None


def write_plain(path: Path, size: int) -> None:
    block = os.urandom(16 * MIB)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])


def plain_copy(src: Path, dst: Path) -> float:
    """MB/s of copying a file with 1 MiB reads/writes and an fsync: the I/O ceiling."""
    buf = bytearray(SEG)
    view = memoryview(buf)
    t = time.perf_counter()
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while n := fi.readinto(view):
            fo.write(view[:n])
        os.fsync(fo.fileno())
    wall = time.perf_counter() - t
    size = dst.stat().st_size
    dst.unlink()
    return size / wall / 1e6


def _user() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def library(work: Path, key: bytes, size: int) -> dict[str, float]:
    """In-process EncryptedWriter (memory -> file) and open_encrypted (file -> memory)."""
    data = os.urandom(64 * MIB)
    path = work / "lib.enc"
    t, u = time.perf_counter(), _user()
    with crypto.EncryptedWriter(path, key) as w:
        for _ in range(size // len(data)):
            w.write(data)
    enc, enc_u = time.perf_counter() - t, _user() - u
    t, u = time.perf_counter(), _user()
    with crypto.open_encrypted(path, key) as r:
        buf = bytearray(SEG)
        while r.readinto(buf):
            pass
    dec, dec_u = time.perf_counter() - t, _user() - u
    path.unlink()
    mb = size / 1e6
    return {"enc": mb / enc, "dec": mb / dec, "enc_user": mb / enc_u, "dec_user": mb / dec_u}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="large file (throughput, RSS)")
    ap.add_argument("--small-mib", type=int, default=64, help="small file (RSS)")
    ap.add_argument("--dir", help="work directory (default: a temp dir)")
    ap.add_argument("--json", help="also write results as JSON here")
    args = ap.parse_args()
    size, small = args.size_mib * MIB, args.small_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="sealtune-bench-", dir=args.dir))
    try:
        key_file = work / "key"
        key_file.write_bytes(crypto.generate_key())
        key = crypto.load_key(key_file)
        res: dict[str, Any] = {"segment_size": SEG, "size_mib": args.size_mib}
        res["openssl_mbps"] = openssl_speed()
        res["raw"] = raw_aesgcm(min(size, 512 * MIB))
        res["library"] = library(work, key, min(size, 512 * MIB))

        plain, enc, dec = work / "plain.bin", work / "plain.enc", work / "plain.out"
        write_plain(plain, size)
        res["copy_mbps"] = plain_copy(plain, dec)
        res["cli_encrypt"] = measured([SEALTUNE, "encrypt", "-k", str(key_file), str(plain),
                                       str(enc)])  # fmt: skip
        res["cli_decrypt"] = measured([SEALTUNE, "decrypt", "-k", str(key_file), str(enc),
                                       str(dec)])  # fmt: skip
        if crypto.sha256_file(dec) != crypto.sha256_file(plain):
            raise SystemExit("round trip mismatch")
        dec.unlink()
        plain.unlink()
        res["rss_large"] = measured([SEALTUNE, "decrypt", "-k", str(key_file), str(enc), "-"])
        enc.unlink()
        write_plain(plain, small)
        subprocess.run([SEALTUNE, "encrypt", "-k", str(key_file), str(plain), str(enc)],
                       check=True)  # fmt: skip
        res["rss_small"] = measured([SEALTUNE, "decrypt", "-k", str(key_file), str(enc), "-"])
        res["bench_process_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        shutil.rmtree(work, ignore_errors=True)

    raw, lib = res["raw"], res["library"]
    rows: list[tuple[str, float, float | None, str]] = []
    if res["openssl_mbps"]:
        rows.append(("openssl speed aes-256-gcm (1 MiB)", res["openssl_mbps"], None, ""))
    rows += [
        ("raw AESGCM encrypt, in process", raw["enc_wall"], raw["enc_cpu"], "1.00"),
        ("raw AESGCM decrypt, in process", raw["dec_wall"], raw["dec_cpu"], "1.00"),
        ("library EncryptedWriter mem->file", lib["enc"], lib["enc_user"],
         f"{lib['enc_user'] / raw['enc_cpu']:.2f}"),
        ("library open_encrypted file->mem", lib["dec"], lib["dec_user"],
         f"{lib['dec_user'] / raw['dec_cpu']:.2f}"),
    ]  # fmt: skip
    for name, k, ref in (("sealtune encrypt file->file", "cli_encrypt", "enc"),
                         ("sealtune decrypt file->file", "cli_decrypt", "dec")):  # fmt: skip
        r = res[k]
        wall, user = size / r["wall"] / 1e6, size / r["user"] / 1e6
        r["mbps_wall"], r["mbps_user_cpu"] = wall, user
        r["ratio_user_cpu_to_raw"] = user / raw[f"{ref}_cpu"]
        r["ratio_wall_to_copy"] = wall / res["copy_mbps"]
        rows.append((name, wall, user, f"{user / raw[f'{ref}_cpu']:.2f}"))
    print(f"\nEncryption throughput, {args.size_mib} MiB file, {SEG // MIB} MiB segments")
    rows.append(("plain file copy + fsync (I/O ceiling)", res["copy_mbps"], None, ""))
    print("MB/s cpu: user CPU time (kernel I/O time excluded) for the library and CLI rows;")
    print("vs raw: cpu column / raw in-process cpu; vs copy: wall / plain copy wall")
    print(f"{'path':<38} {'MB/s wall':>10} {'MB/s cpu':>10} {'vs raw':>7} {'vs copy':>8}")
    for name, wall, cpu, ratio in rows:
        vs_copy = f"{wall / res['copy_mbps']:.2f}" if name.startswith("sealtune") else ""
        cpu_s = f"{cpu:.0f}" if cpu else "-"
        print(f"{name:<38} {wall:>10.0f} {cpu_s:>10} {ratio:>7} {vs_copy:>8}")
    if res["openssl_mbps"]:
        print(f"raw AESGCM / openssl: {raw['enc_wall'] / res['openssl_mbps']:.2f} (encrypt)")
    rs, rl = res["rss_small"]["rss_kib"], res["rss_large"]["rss_kib"]
    res["rss_ratio_large_to_small"] = rl / rs
    print("\nPeak RSS of `sealtune decrypt FILE -` (verify pass + stream to stdout)")
    print(f"{args.small_mib:>6} MiB file: {rs / 1024:8.1f} MiB")
    print(f"{args.size_mib:>6} MiB file: {rl / 1024:8.1f} MiB   ratio {rl / rs:.2f} (want ~1.0)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
