#!/usr/bin/env python3
"""Regenerate fuzz/seeds/ from the RFC 4475 corpus (tests/data/rfc4475).

Every bare LF becomes CRLF (the rule in EXPECTED.tsv). Run from anywhere:
    python3 fuzz/make_seeds.py
Seeds are deterministic, so re-running leaves git clean.
"""
import pathlib
import re

FUZZ = pathlib.Path(__file__).resolve().parent
DATA = FUZZ.parent / "tests" / "data" / "rfc4475"
SEEDS = FUZZ / "seeds"


def crlf(raw: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", raw)


def write(target: str, name: str, data: bytes) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main() -> None:
    msgs = {p.stem: crlf(p.read_bytes()) for p in sorted(DATA.glob("*.dat"))}
    uris = set()
    for stem, m in msgs.items():
        write("parse_message", stem, m)
        # stream_framer: first byte = number of chunk-size bytes that follow.
        write("stream_framer", stem + "-whole", b"\x00" + m)
        write("stream_framer", stem + "-chunks", b"\x04\x01\x07\x40\x03" + m)
        head = m.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        first = head.split("\r\n", 1)[0].split(" ")
        if len(first) == 3 and not first[0].startswith("SIP/"):
            uris.add(first[1])
        uris.update(re.findall(r"<([^<>\s]+)>", head))
    # A few streams of several messages, with keepalives between them.
    keep = [s for s in ("wsinv", "esc01", "intmeth", "lwsdisp", "dblreq", "unreason", "noreason")
            if s in msgs]
    stream = b"\r\n\r\n".join(msgs[s] for s in keep)
    write("stream_framer", "multi-whole", b"\x00" + stream)
    write("stream_framer", "multi-bytewise", b"\x01\x01" + stream)
    uris.update([
        "sip:alice@atlanta.com",
        "sips:bob:secret@[2001:db8::1]:5061;transport=tcp;lr?Subject=hi&Priority=urgent",
        "sip:%61lice@192.0.2.1:5060;maddr=[2001:db8::9];ttl=15",
        "tel:+1-201-555-0123;phone-context=example.com",
        "tel:7042;phone-context=example.com",
        "sip:+12125551212@server.example.net;user=phone",
        "sip:host_name.example.com.",
        "urn:service:sos",
        "mailto:user@example.com",
    ])
    for i, u in enumerate(sorted(uris)):
        write("parse_uri", f"uri{i:03}", u.encode())


if __name__ == "__main__":
    main()
