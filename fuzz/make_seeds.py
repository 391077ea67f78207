#!/usr/bin/env python3
"""Regenerate fuzz/seeds/: the SIP targets from the RFC 4475 corpus (tests/data/rfc4475),
the management-RPC targets (http_framer, jsonrpc, xmlrpc) from hand-made requests like
those of the tests and docs/rpc.md, the script targets (script_message, script_text) from
both and from the scripts siprox ships, config_files from the shipped and bench conf.d
files and the README's tenant example, peer_certificate from certificates `openssl req`
makes (random keys: written only when missing, so a re-run leaves them as committed).

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


def rfc4475() -> dict:
    """The RFC 4475 messages by name, bare LFs made CRLF."""
    return {p.stem: crlf(p.read_bytes()) for p in sorted(DATA.glob("*.dat"))}


def main(msgs: dict) -> None:
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


# JSON-RPC bodies: the spec's examples, siproxctl's calls, batches, notifications, garbage.
JSON = {
    "version": b'{"jsonrpc":"2.0","id":1,"method":"core.version"}',
    "string-id": b'{"jsonrpc":"2.0","id":"a","method":"core.uptime"}',
    "null-id": b'{"jsonrpc":"2.0","id":null,"method":"core.kill"}',
    "positional": b'{"jsonrpc":"2.0","method":"ul.show","params":["alice@example.com",3,true,1.5,null],"id":7}',
    "named": b'{"jsonrpc":"2.0","method":"tls.kill","params":{"id":12,"why":["a",{"b":-5000000000}]},"id":8}',
    "help": b'{"jsonrpc":"2.0","method":"system.methodHelp","params":["tls.kill"],"id":9}',
    "list": b'{"jsonrpc":"2.0","method":"system.listMethods","id":10}',
    "notification": b'{"jsonrpc":"2.0","method":"cfg.reload"}',
    "batch": b'[{"jsonrpc":"2.0","id":1,"method":"core.version"},{"jsonrpc":"2.0","id":2,"method":"core.kill"}]',
    "batch-mixed": b' [{"jsonrpc":"2.0","method":"sum","params":[1,2],"id":"1"},'
                   b'{"jsonrpc":"2.0","method":"sum","params":[7]},{"foo":"boo"},'
                   b'{"jsonrpc":"2.0","method":"nope","id":"5"},1,[]]',
    "batch-notifications": b'[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","method":"b"}]',
    "empty-batch": b"[]",
    "bad-version": b'{"jsonrpc":"1.0","method":"sum","id":1}',
    "bad-id": b'{"jsonrpc":"2.0","method":"sum","id":{}}',
    "bad-params": b'{"jsonrpc":"2.0","method":"sum","params":3,"id":1}',
    "dup-method": b'{"jsonrpc":"2.0","id":1,"method":"core.version","method":"core.kill"}',
    "unicode": rb'{"jsonrpc":"2.0","id":"\u00e9","method":"ul.show","params":["J\u00fcrgen \ud83d\ude00 \u0000"]}',
    "parse-error": b'{"jsonrpc":"2.0","method":"foobar,"params":"bar","baz]',
}

# XML-RPC bodies: Python's xmlrpc.client style, SER's, every value type, nesting, faults.
XML_CALL = (b"<?xml version='1.0'?>\n<methodCall>\n<methodName>ul.show</methodName>\n<params>\n"
            b"<param>\n<value><string>alice@example.com</string></value>\n</param>\n"
            b"<param>\n<value><int>3</int></value>\n</param>\n"
            b"<param>\n<value><boolean>1</boolean></value>\n</param>\n"
            b"<param>\n<value><double>1.5</double></value>\n</param>\n"
            b"<param>\n<value><struct>\n<member>\n<name>a</name>\n<value><array><data>\n"
            b"<value><i4>1</i4></value>\n<value>bare</value>\n</data></array></value>\n"
            b"</member>\n</struct></value>\n</param>\n</params>\n</methodCall>\n")
NESTED = (b"<methodCall><methodName>deep</methodName><params><param>"
          + b"<value><array><data>" * 12 + b"<value><i8>-5000000000</i8></value>"
          + b"</data></array></value>" * 12 + b"</param></params></methodCall>")
TOO_DEEP = (b"<methodCall><methodName>x</methodName><params><param>"
            + b"<value><array><data>" * 40 + b"</params></methodCall>")
# Regression: `</value>` in comments hid nesting from the depth check (fixed in xmlrpc.rs).
HIDDEN = (b"<methodCall><methodName>x</methodName><params><param>"
          + (b"<value><array><data>" * 3 + b"<!--</value></value></value>-->") * 14
          + b"<value><int>1</int></value>" + b"</data></array></value>" * 42
          + b"</param></params></methodCall>")
XML = {
    "hidden-closes": HIDDEN,
    "python": XML_CALL,
    "no-params": b"<methodCall><methodName>tls.list</methodName></methodCall>",
    "empty-params": b'<?xml version="1.0"?><methodCall><methodName>core.version</methodName><params></params></methodCall>',
    "types": b"<methodCall><methodName>t</methodName><params>"
             b"<param><value><dateTime.iso8601>20260102T03:04:05</dateTime.iso8601></value></param>"
             b"<param><value><base64>aGVsbG8=</base64></value></param>"
             b"<param><value><nil/></value></param><param><value/></param>"
             b"<param><value><string>x&lt;&amp;&gt;&#13;&#x1F600;<![CDATA[<value>]]></string></value></param>"
             b"<param><value><double>-0.0</double></value></param>"
             b"<param><value><struct></struct></value></param>"
             b"<param><value><array><data></data></array></value></param>"
             b"</params></methodCall>",
    "nested": NESTED,
    "too-deep": TOO_DEEP,
    "empty-name": b"<methodCall><methodName></methodName></methodCall>",
    "bad-int": b"<methodCall><methodName>a</methodName><params><param><value><int>x</int></value></param></params></methodCall>",
    "unclosed": b"<methodCall><methodName>x</methodName>",
    "fault": b'<?xml version="1.0"?><methodResponse><fault><value><struct>'
             b"<member><name>faultCode</name><value><int>403</int></value></member>"
             b"<member><name>faultString</name><value><string>forbidden</string></value></member>"
             b"</struct></value></fault></methodResponse>",
    "response": b"<methodResponse><params><param><value><string>siprox 0.1.0</string></value></param></params></methodResponse>",
}


def http(method: str, target: str, body: bytes = b"", ctype=None, extra: str = "",
         length=None) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if body or method in ("POST", "PUT") or length is not None:
        head += f"Content-Length: {len(body) if length is None else length}\r\n"
    return head.encode() + b"\r\n" + body


def rpc_seeds() -> None:
    # jsonrpc / xmlrpc: first byte = Content-Type label (0 JSON, 1 XML, 2 none, 3 text/plain).
    for name, body in JSON.items():
        write("jsonrpc", name, b"\x00" + body)
    write("jsonrpc", "batch-as-xml", b"\x01" + JSON["batch"])
    write("jsonrpc", "version-unlabelled", b"\x02" + JSON["version"])
    for name, body in XML.items():
        write("xmlrpc", name, b"\x01" + body)
    write("xmlrpc", "python-as-json", b"\x00" + XML_CALL)
    write("xmlrpc", "python-unlabelled", b"\x02" + b"\n  " + XML_CALL)

    # http_framer: first byte = number of chunk-size bytes that follow (as stream_framer).
    reqs = {
        "json": http("POST", "/", JSON["version"], "application/json"),
        "json-rpc2": http("POST", "/RPC2", JSON["named"], "application/json-rpc"),
        "batch": http("POST", "/", JSON["batch-mixed"], "application/json"),
        "xml": http("POST", "/RPC2", XML_CALL, "text/xml; charset=utf-8"),
        "nested-xml": http("POST", "/RPC2", NESTED, "application/xml"),
        "xml-labelled-json": http("POST", "/", XML["no-params"], "application/json"),
        "unlabelled": http("POST", "/RPC", JSON["help"]),
        "metrics": http("GET", "/metrics"),
        "metrics-10": b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "options": b"OPTIONS * HTTP/1.1\r\n\r\n",
        "close": http("POST", "/", JSON["list"], "application/json", "Connection: close\r\n"),
        "no-length": b"POST / HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{}",
        "chunked": b"POST / HTTP/1.1\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(JSON["version"])
                   + JSON["version"] + b"\r\n0\r\n\r\n",
        "huge-length": http("POST", "/", b"{}", "application/json", length=99999999999),
        "overflow-length": http("POST", "/", b"{}", "application/json",
                                length=18446744073709551617),
        "two-lengths": b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "http2": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "wrong-path": http("POST", "/nope?x=1", JSON["version"], "application/json"),
        "image": http("POST", "/", b"\x89PNG", "image/png"),
    }
    for name, r in reqs.items():
        write("http_framer", name + "-whole", b"\x00" + r)
        write("http_framer", name + "-chunks", b"\x04\x01\x07\x40\x03" + r)
    pipeline = b"\r\n".join([reqs["json"], reqs["xml"], reqs["metrics"], reqs["batch"],
                              reqs["unlabelled"]])
    write("http_framer", "pipeline-whole", b"\x00" + pipeline)
    write("http_framer", "pipeline-bytewise", b"\x01\x01" + pipeline)


REGISTER_AUTH = b"""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TLS 198.51.100.7:40123;branch=z9hG4bKr2;rport
Max-Forwards: 70
To: <sip:alice@example.com>
From: <sip:alice@example.com>;tag=r1
Call-ID: r1@198.51.100.7
CSeq: 2 REGISTER
Contact: <sip:alice@198.51.100.7:40123;transport=tls;ob>;expires=600;+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>";reg-id=1
Path: <sip:edge.example.net;lr>
Supported: outbound, path
Authorization: Digest username="alice", realm="example.com", nonce="AAAA", uri="sip:example.com", response="0123456789abcdef0123456789abcdef", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c1"
X-Foo: a=1;b=2, <sip:x@y>;p=q
X-Num: 42
Content-Length: 0

"""


def script_seeds(msgs: dict) -> None:
    reg = crlf(REGISTER_AUTH)
    # First byte: script (low 2 bits), TLS (4), a peer certificate (8).
    for i, (stem, m) in enumerate(msgs.items()):
        write("script_message", stem, bytes([i % 16 & ~8]) + m)
    cert = "alice\x01Example Inc\x01sip:alice@example.com\x01/CN=alice/O=Example Inc".encode()
    for k in range(4):
        write("script_message", f"register-{k}", bytes([k | 4]) + reg)
        write("script_message", f"register-cert-{k}", bytes([k | 12]) + cert + b"\x00" + reg)
    root = FUZZ.parent
    scripts = {
        "conf-default": root / "conf.d" / "scripts" / "default.cfg",
        "docs-default": root / "docs" / "examples" / "default.cfg",
        "docs-htable-ban": root / "docs" / "examples" / "htable-ban.cfg",
    }
    for name, path in scripts.items():
        write("script_text", name, path.read_bytes())
    text = (FUZZ / "src" / "script.rs").read_text()
    everything = text.split('pub const EVERYTHING: &str = r#"', 1)[1].split('"#;', 1)[0]
    write("script_text", "everything", everything.encode())


def config_seeds() -> None:
    root = FUZZ.parent
    core = (root / "conf.d" / "00-core.toml").read_bytes()
    bench = (root / "benches" / "conf.d" / "00-bench.toml").read_bytes()
    stateful = (root / "benches" / "conf.d-stateful" / "00-bench.toml").read_bytes()
    readme = (root / "README.md").read_text()
    # The tenant example: the ```toml block that starts with its file's name.
    tenant = next(b for b in readme.split("```toml\n")[1:]
                  if b.startswith("# conf.d/domains/")).split("```", 1)[0].encode()
    env = b"SIPROX_LOG__LEVEL=debug\nSIPROX_TLS__MIN_VERSION=1.3\nSIPROX_NOPE=1\n"
    # Parts at each NUL: 00-core.toml, domains/tenant.toml, 10-listen.toml, scripts.toml.
    write("config_files", "core", core)
    write("config_files", "bench", bench)
    write("config_files", "stateful", stateful)
    write("config_files", "core-tenant", core + b"\x00" + tenant)
    write("config_files", "bench-tenant-env", bench + b"\x00" + tenant + b"\x00" + env)
    write("config_files", "tenant-alone", b"\x00" + tenant)
    write("config_files", "listen-replace", bench + b"\x00\x00listen_replace = true\n"
          b"[[listen]]\nproto = \"tls\"\naddr = \"127.0.0.1:5061\"\n")


def cert_seeds() -> None:
    import subprocess
    import tempfile
    sans = ",".join(f"DNS:h{i}.example.com" for i in range(40))
    certs = {
        "ec-every-field": ("/C=US/ST=CA/L=Palo Alto/O=Example Inc/OU=Voice/CN=alice"
                           "/UID=u-alice/emailAddress=alice@example.com",
                           "DNS:alice.example.com,URI:sip:alice@example.com,"
                           "email:alice@mail.example.com,IP:192.0.2.7,IP:2001:db8::7", "ec"),
        "rsa-utf8-multivalued": ("/CN=J\u00fcrgen \u00c5ngstr\u00f6m+UID=j1/O=B\u00fcro", None, "rsa"),
        "ec-empty-subject": ("/", "DNS:only-a-san.example.com", "ec"),
        "ec-many-sans-two-cns": ("/CN=first/CN=second/O=a\\/O=b", sans, "ec"),
    }
    d = SEEDS / "peer_certificate"
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (subj, san, kind) in certs.items():
            for form in ("DER", "PEM"):
                out = d / f"{name}.{form.lower()}"
                if out.exists():
                    continue
                key = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
                       if kind == "ec" else ["-newkey", "rsa:2048"])
                cmd = ["openssl", "req", "-x509", "-nodes", "-utf8", "-days", "1",
                       "-keyout", f"{tmp}/k.pem", "-subj", subj,
                       "-set_serial", "0x00ffeeddccbbaa99887766554433221100", "-outform", form,
                       "-out", str(out)] + key
                if san:
                    cmd += ["-addext", f"subjectAltName={san}"]
                subprocess.run(cmd, check=True, capture_output=True)


if __name__ == "__main__":
    messages = rfc4475()
    main(messages)
    rpc_seeds()
    script_seeds(messages)
    config_seeds()
    cert_seeds()
