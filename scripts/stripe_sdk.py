#!/usr/bin/env python3
"""Cross-check helper backed by the OFFICIAL stripe Python SDK (PyPI `stripe`).

The Rust integration tests of `reconciled` use this script so that webhook
signatures are produced and checked by code nobody on the project wrote.
Nothing here computes an HMAC itself: signing goes through
`stripe.WebhookSignature.generate_signature_header` and verification through
`stripe.Webhook.construct_event`.

Install the pinned SDK with:  pip install -r scripts/requirements-sdk.txt

Usage (the raw body is always read from stdin, byte for byte):

  stripe_sdk.py sign --secret S [--timestamp T]
      Prints one line: the Stripe-Signature header value `t=...,v1=...`
      (timestamp defaults to now). Exit 0.

  stripe_sdk.py verify --secret S --header H [--tolerance N]
      Calls stripe.Webhook.construct_event(body, H, S, tolerance=N)
      (N defaults to 300).
        exit 0, stdout `OK <event id> <event type>`   signature accepted
        exit 1, stdout `FAIL <message>`               SignatureVerificationError
        exit 2, message on stderr                     any other error

Behaviour of the SDK worth knowing when comparing (stripe 16.1.0):
  * The body must be valid UTF-8: bytes are decoded before the HMAC; invalid
    UTF-8 raises UnicodeDecodeError (exit 2 here), in both sign and verify.
  * The tolerance only rejects timestamps that are too OLD; future
    timestamps pass. A tolerance of 0 disables the timestamp check.
  * The first `t=` entry is used, parsed with Python int() (so " 12", "+12"
    and "1_2" are accepted); any `v1=` entry may match.
  * A non-ASCII v1 value makes hmac.compare_digest raise TypeError (exit 2).
  * After verifying, construct_event parses the body as JSON and builds an
    Event; a non-object body or `"object": "v2.core.event"` is exit 2.
"""

import argparse
import sys
import time

import stripe

# The exception lives at stripe.SignatureVerificationError in current
# releases and at stripe.error.SignatureVerificationError in old ones.
_SigError = getattr(stripe, "SignatureVerificationError", None)
if _SigError is None:  # pragma: no cover - very old SDKs
    _SigError = stripe.error.SignatureVerificationError


def _read_body() -> bytes:
    return sys.stdin.buffer.read()


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


def cmd_sign(args: argparse.Namespace) -> int:
    body = _read_body()
    # generate_signature_header takes the body as str; decoding strict UTF-8
    # and letting the SDK re-encode it yields exactly the original bytes.
    payload = body.decode("utf-8")
    timestamp = args.timestamp if args.timestamp is not None else int(time.time())
    header = stripe.WebhookSignature.generate_signature_header(
        payload, args.secret, timestamp=timestamp
    )
    sys.stdout.write(header + "\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    # construct_event accepts bytes (verify_header decodes them as UTF-8 and
    # json.loads takes bytes), so the raw body is passed through unchanged.
    body = _read_body()
    try:
        event = stripe.Webhook.construct_event(
            body, args.header, args.secret, tolerance=args.tolerance
        )
    except _SigError as exc:
        message = getattr(exc, "user_message", None) or str(exc)
        sys.stdout.write("FAIL " + _one_line(message) + "\n")
        return 1
    # Event is not a dict in recent SDKs (no .get); use attribute access.
    event_id = getattr(event, "id", None)
    event_type = getattr(event, "type", None)
    sys.stdout.write("OK %s %s\n" % (event_id, event_type))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Sign / verify Stripe webhook bodies with the official stripe SDK."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_sign = sub.add_parser("sign", help="print a Stripe-Signature header value for stdin")
    p_sign.add_argument("--secret", required=True)
    p_sign.add_argument("--timestamp", type=int, default=None)
    p_sign.set_defaults(func=cmd_sign)

    p_verify = sub.add_parser("verify", help="verify stdin against a Stripe-Signature header")
    p_verify.add_argument("--secret", required=True)
    p_verify.add_argument("--header", required=True)
    p_verify.add_argument("--tolerance", type=int, default=300)
    p_verify.set_defaults(func=cmd_verify)

    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse usage errors are "other errors"
        return 2 if exc.code else 0
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - any non-signature failure
        sys.stderr.write("ERROR %s: %s\n" % (type(exc).__name__, _one_line(exc)))
        return 2


if __name__ == "__main__":
    sys.exit(main())
