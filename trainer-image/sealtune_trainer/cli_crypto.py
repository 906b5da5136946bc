"""`sealtune keygen | encrypt | decrypt | inspect | redact`: the data-handling subcommands.

Light on purpose (no torch): these run in init containers and on laptops. Keys are files of
32 raw bytes or their base64, as mounted from a Kubernetes Secret. Plaintext output appears
only after every segment authenticated (files are published atomically; `decrypt ... -`
verifies the whole file before streaming to stdout).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from sealtune_api.exitcodes import ExitCode
from sealtune_trainer import crypto

PROGRESS_MIN_BYTES = 8 << 20  # no bar for small files
# A copy of config.PII_ENTITIES: importing the pydantic models would add ~0.2 s to every
# `sealtune` start. tests/crypto/test_crypto_cli.py keeps the two equal.
PII_ENTITIES = ("EMAIL", "PHONE", "CN_ID", "BANK_CARD", "IBAN", "IP_ADDRESS", "US_SSN")


def register(subparsers: Any) -> None:
    """Add the data-handling subcommands to the `sealtune` parser."""
    p = subparsers.add_parser("keygen", help="generate a 32-byte key (file mode 0400)")
    p.add_argument("-o", "--output", help="key file to create (default: stdout)")
    p.add_argument("--base64", action="store_true", help="write base64 text instead of raw bytes")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(func=cmd_keygen)

    p = subparsers.add_parser("encrypt", help="encrypt a file (streaming AES-256-GCM)")
    p.add_argument("-k", "--key", required=True, help="key file (32 raw bytes or base64)")
    p.add_argument("input", help="plaintext file, '-' for stdin")
    p.add_argument("output", help="ciphertext file to create (published atomically)")
    p.add_argument(
        "--segment-size",
        type=int,
        default=crypto.DEFAULT_SEGMENT_SIZE,
        help=f"plaintext bytes per segment (default {crypto.DEFAULT_SEGMENT_SIZE})",
    )
    _progress_flags(p)
    p.set_defaults(func=cmd_encrypt)

    p = subparsers.add_parser("decrypt", help="decrypt and verify a file")
    p.add_argument("-k", "--key", required=True, help="key file (32 raw bytes or base64)")
    p.add_argument("input", help="ciphertext file")
    p.add_argument("output", help="plaintext file to create, '-' for stdout (verified first)")
    _progress_flags(p)
    p.set_defaults(func=cmd_decrypt)

    p = subparsers.add_parser(
        "inspect",
        help="show an encrypted file's header (no key needed); exit 5 if the size is inconsistent",
    )
    p.add_argument("file", help="ciphertext file")
    p.add_argument("-k", "--key", help="also authenticate every segment with this key")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser(
        "redact", help="redact PII from text on stdin to stdout; counts per type on stderr"
    )
    p.add_argument(
        "--entities",
        nargs="+",
        choices=PII_ENTITIES,
        default=list(PII_ENTITIES),
        metavar="ENTITY",
        help=f"entity types (default all): {' '.join(PII_ENTITIES)}",
    )
    p.add_argument("--mode", choices=["mask", "pseudonymize"], default="mask")
    p.add_argument(
        "--key", help="HMAC key file for pseudonymize (default: random, tokens stable per run)"
    )
    p.add_argument("-i", "--input", default="-", help="input text file (default stdin)")
    p.add_argument("-o", "--output", default="-", help="output text file (default stdout)")
    p.set_defaults(func=cmd_redact)


def _progress_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", action="store_true", help="always show a progress bar")
    g.add_argument("--no-progress", action="store_true", help="never show a progress bar")


@contextlib.contextmanager
def _progress(
    args: argparse.Namespace, total: int | None, desc: str
) -> Iterator[Callable[[int], None] | None]:
    """A tqdm byte counter on stderr when asked, or when stderr is a TTY and the file is large."""
    want = args.progress or (
        not args.no_progress and sys.stderr.isatty() and (total or 0) >= PROGRESS_MIN_BYTES
    )
    if not want:
        yield None
        return
    try:
        from tqdm import tqdm
    except ImportError:  # the light operator image has no tqdm
        yield None
        return
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr) as bar:
        yield bar.update


def _user_error(message: str) -> Exception:
    from sealtune_trainer.cli import UserError

    return UserError(message)


# --------------------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    key = crypto.generate_key()
    data = base64.b64encode(key) + b"\n" if args.base64 else key
    if not args.output or args.output == "-":
        if not args.base64 and sys.stdout.isatty():
            raise _user_error("refusing to write a raw key to a terminal; use --base64 or -o")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        if args.force:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.output)
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        except FileExistsError:
            raise _user_error(f"{args.output} exists; use --force to replace it") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(args.output, 0o400)  # whatever the umask
    print(f"key id: {crypto.key_id(key)}", file=sys.stderr)
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    key = crypto.load_key(args.key)
    if args.output == "-":
        raise _user_error("encrypt writes a file (published atomically); '-' is not supported")
    with contextlib.ExitStack() as stack:
        if args.input == "-":
            src: Any = sys.stdin.buffer
            total = None
        else:
            src = stack.enter_context(open(args.input, "rb"))
            total = os.fstat(src.fileno()).st_size
        progress = stack.enter_context(_progress(args, total, "encrypt"))
        w = stack.enter_context(
            crypto.EncryptedWriter(args.output, key, segment_size=args.segment_size)
        )
        buf = bytearray(args.segment_size)
        view = memoryview(buf)
        while n := src.readinto(view):
            w.write(view[:n])
            if progress is not None:
                progress(n)
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    key = crypto.load_key(args.key)
    if args.output != "-":
        total = crypto.inspect(args.input)["plaintextSize"]  # for the bar only
        with _progress(args, total, "decrypt") as progress:
            crypto.decrypt_file(args.input, args.output, key, progress=progress)
        return 0
    with crypto.open_encrypted(args.input, key) as reader:
        # stdout cannot be retracted: authenticate every segment before writing plaintext.
        reader.verify()
        reader.seek(0)
        out = sys.stdout.buffer
        with _progress(args, reader.plaintext_size, "decrypt") as progress:
            while chunk := reader.read(reader.segment_size):
                out.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        out.flush()
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    info = crypto.inspect(args.file)
    if args.key:
        key = crypto.load_key(args.key)
        with crypto.open_encrypted(args.file, key) as reader:
            reader.verify()
        info["authenticated"] = True
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0 if info["sizeConsistent"] else ExitCode.CORRUPTED


def cmd_redact(args: argparse.Namespace) -> int:
    from sealtune_trainer.redact import Redactor

    hmac_key = crypto.load_key(args.key) if args.key else None
    if args.mode == "pseudonymize" and hmac_key is None:
        note = "sealtune: note: random HMAC key; tokens are stable within this run only"
        print(note, file=sys.stderr)
    redactor = Redactor(args.entities, mode=args.mode, hmac_key=hmac_key)
    src = (
        io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
        if args.input == "-"
        else open(args.input, encoding="utf-8", newline="")  # noqa: SIM115
    )
    dst = (
        io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="", write_through=True)
        if args.output == "-"
        else open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    )
    try:
        while lines := src.readlines(1 << 20):  # whole lines, about 1 MiB at a time
            dst.write(redactor.redact("".join(lines)))
        dst.flush()
    except UnicodeDecodeError:
        raise _user_error("input is not valid UTF-8 text") from None
    finally:
        for stream, name in ((src, args.input), (dst, args.output)):
            if name == "-":
                stream.detach()  # leave sys.stdin/sys.stdout open
            else:
                stream.close()
    counts = {e: redactor.counts.get(e, 0) for e in redactor.entities}
    print("redacted: " + ", ".join(f"{e}={n}" for e, n in counts.items()), file=sys.stderr)
    return 0
